"""A fourth backend written only against the generator contract (``MaskedGenerator`` and ``Context``) is sampled,
recorded, fitted and loaded by the nodes' bridge, with no line of generic code naming it.

The fake model is tiny but has what makes real backends hard: rows of one batch have different lengths (class c is
written as c % 2 + 1 prefix tokens, the unconditional branch as one null token), so the image tokens sit at
other positions in each row, features are right-padded, and fitting must rebuild every recorded row's context.
"""
from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch
from safetensors import safe_open
from torch import nn

import shortcut_core
from shortcut_core import Condition, SamplerSettings, ShortcutWeights, build_shortcut, sample
from shortcut_core.fitting import FitSettings, RunOptions, fit_shortcut
from shortcut_core.recording import TrajectoryDataset, record
from shortcut_core.weights import load_shortcut, save_shortcut
from test_nodes import ComfyStandin, advanced_inputs, pack, run  # noqa: F401 - pack is a fixture

SETTINGS = SamplerSettings(steps=6, cfg_scale=1.5, seed=0)
MARKER = "fake_backend.json"


def fake_backend(core):
    """The fake generator class built on the contract of ``core`` (the engine, or the pack's copy of it)."""
    contract = importlib.import_module(core.__name__ + ".generator")
    codes, mask, null, classes, grid = 16, 16, 20, 3, (4, 4)

    @dataclass
    class FakeContext(contract.Context):
        template: Optional[torch.Tensor] = contract.per_row()  # [R, T] prefix tokens, then mask ids

    class FakeGenerator(contract.MaskedGenerator):
        condition_kind = "class"
        per_row_context = True
        num_classes = classes

        def __init__(self, seed: int = 0):
            super().__init__()
            torch.manual_seed(seed)
            self.identity, self.feature_dim, self.codebook_size, self.grid_size = "fake-contract", 32, codes, grid
            self.class_names = ["red", "green", "blue"]
            self.default_settings = {"steps": 6, "cfg_scale": 1.5}
            self.embed = nn.Embedding(codes + 1 + classes + 1, 32)
            self.position = nn.Parameter(0.02 * torch.randn(1, 2 + grid[0] * grid[1], 32))
            self.mix = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.out = nn.Linear(32, codes)
            self.vq = nn.Embedding(codes, 3)  # each code's colour; the contract keeps "vq" in float32

        def prepare(self, condition, batch_size, guidance):
            self.check_condition(condition, batch_size)
            prefixes = [[mask + 1 + int(c)] * (int(c) % 2 + 1) for c in condition.labels]
            prefixes += [[null]] * batch_size if guidance else []
            lengths = torch.tensor([len(p) + self.num_tokens for p in prefixes])
            total = int(lengths.max())
            template = torch.full((len(prefixes), total), mask)
            for r, prefix in enumerate(prefixes):
                template[r, :len(prefix)] = torch.tensor(prefix)
            index = torch.stack([len(p) + torch.arange(self.num_tokens) for p in prefixes])
            padding = torch.arange(total)[None] >= lengths[:, None]
            return FakeContext(batch_size, 2 if guidance else 1, self.device,
                               padding=padding.to(self.device) if bool(padding.any()) else None,
                               lengths=lengths.tolist(), image_index=index.to(self.device),
                               template=template.to(self.device))

        def features(self, codes, masked, ctx):
            state = torch.where(masked, torch.full_like(codes, mask), codes).repeat(ctx.branches, 1)
            ids = ctx.template.clone().scatter_(1, ctx.image_index, state)
            x = self.embed(ids) + self.position[:, :ids.shape[1]]
            return self.mix(x, src_key_padding_mask=ctx.padding)

        def head(self, feature, ctx, masked):
            return self.out(contract.take_positions(feature, self.image_positions(ctx)))

        def new_tokens(self, codes, new_map, ctx):
            ids, cells, valid = contract.gather_new_tokens(new_map, codes)
            ids, cells, valid = (t.repeat(ctx.branches, 1) for t in (ids, cells, valid))
            positions = self.image_positions(ctx).gather(1, cells)
            return contract.NewTokens(self.embed(ids) + self.position[0, positions], positions, valid)

        @torch.no_grad()
        def decode(self, codes):
            colours = torch.sigmoid(self.vq(codes.long())).float()  # [B, L, 3]
            images = colours.transpose(1, 2).reshape(codes.shape[0], 3, *self.grid_size)
            return images.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)

    return FakeGenerator


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The fake generator, a dataset recorded from it, and shortcut weights fitted on it and saved."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("contract")
    generator = fake_backend(shortcut_core)().eval().requires_grad_(False)
    record(generator, base / "data", [Condition(labels=[0, 1]), Condition(labels=[2, 1]), Condition(labels=[0, 2])],
           SETTINGS)
    weights, report = fit_shortcut(generator, TrajectoryDataset(base / "data"), generator.default_shortcut_config(),
                                   FitSettings(steps=150, batch_size=8, lr=2e-3, ema=0.9, eval_every=150,
                                               val_fraction=0.25), run=RunOptions(progress=False))
    save_shortcut(base / "fake_shortcut.safetensors", weights)
    return generator, base, weights, report


def test_fake_backend_samples_vanilla_and_with_a_shortcut():
    generator = fake_backend(shortcut_core)().eval()
    condition = Condition(labels=[0, 1, 2])
    vanilla = sample(generator, condition, SETTINGS)
    assert vanilla.base_calls == 6 and bool((vanilla.decode_order >= 0).all())
    weights = ShortcutWeights(build_shortcut(generator.default_shortcut_config()).eval())
    same = sample(generator, condition, SamplerSettings(steps=6, budget=6, cfg_scale=1.5, seed=0), shortcut=weights)
    assert torch.equal(same.codes, vanilla.codes)
    fast = sample(generator, condition, SamplerSettings(steps=6, budget=2, cfg_scale=1.5, seed=0), shortcut=weights)
    assert (fast.base_calls, fast.shortcut_calls) == (2, 4)
    images = generator.decode(fast.codes)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32


def test_fake_backend_records_ragged_rows_and_fits_better_than_reuse(fitted):
    generator, base, weights, report = fitted
    dataset = TrajectoryDataset(base / "data")
    assert len(dataset) == 12  # 6 images x 2 CFG branches
    lengths = {shape[1] for shape in dataset.shapes}
    assert lengths == {17, 18}  # padded to the batch's longest row: 1 + 16, or 2 + 16 with an odd class
    assert report["data_mode"] == "memory-list"  # rows need their own context: not stacked
    assert report["val_mse"] < report["val_baseline_mse"]
    assert weights.per_call_ratio is not None and weights.per_call_ratio > 0
    assert weights.generator == "fake-contract" and weights.training is report


def test_fitted_weights_carry_their_per_call_ratio(fitted):
    generator, base, weights, _ = fitted
    path = base / "fake_shortcut.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["per_call_ratio"]) == pytest.approx(weights.per_call_ratio)
    loaded = load_shortcut(path, generator)
    assert loaded.per_call_ratio == pytest.approx(weights.per_call_ratio)
    result = sample(generator, Condition(labels=[1]), SamplerSettings(steps=6, budget=3, cfg_scale=1.5),
                    shortcut=loaded)
    assert (result.base_calls, result.shortcut_calls) == (3, 3)


def test_nodes_load_and_sample_the_fake_backend_through_the_bridge(pack, fitted, tmp_path, monkeypatch):  # noqa: F811
    _, base, weights, _ = fitted
    standin = ComfyStandin(tmp_path)
    for name, module in standin.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    folder = standin.models_dir / "masked_generators" / "fake"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / MARKER).write_text("{}")
    (standin.models_dir / "shortcut").mkdir(parents=True)
    shortcut_file = base / "fake_shortcut.safetensors"
    (standin.models_dir / "shortcut" / "fake.safetensors").write_bytes(shortcut_file.read_bytes())
    backend = fake_backend(pack.core)
    backends = importlib.import_module(pack.core.__name__ + ".backends")
    card = importlib.import_module(pack.core.__name__ + ".generator").GeneratorCard(
        "class", ("red", "green", "blue"), {"steps": 6, "cfg_scale": 1.5})

    def load_fake(path, device, dtype):
        return backend() if (Path(path) / MARKER).is_file() else None

    def describe_fake(path):
        return card if (Path(path) / MARKER).is_file() else None

    backends.PATH_LOADERS.insert(0, load_fake)
    backends.PATH_DESCRIBERS.insert(0, describe_fake)
    try:
        assert "fake/" in pack.bridge.list_generators()
        gen = run(pack.loaders.LoadMaskedGenerator, generator_name="fake/", device="cpu", dtype="bf16")[0]
        assert gen.generator.identity == "fake-contract" and gen.image_size is None
        assert gen.generator.vq.weight.dtype == torch.float32  # float32_modules, whatever the dtype
        assert gen.generator.out.weight.dtype == torch.bfloat16
        gen = run(pack.loaders.LoadMaskedGenerator, generator_name="fake/", device="cpu", dtype="fp32")[0]
        shortcut = run(pack.loaders.LoadShortcutWeights, generator=gen, shortcut_name="fake.safetensors")[0]
        assert shortcut.weights.per_call_ratio == pytest.approx(weights.per_call_ratio)
        out = run(pack.sampling.ShortcutSamplerAdvanced,
                  **advanced_inputs(pack, gen, shortcut, class_name="blue", steps=6, budget=2))
        images, tokens = out.args
        assert images.shape == (2, 16, 16, 3) and tokens["generator"] == "fake-contract"
        stats = out.ui["shortcut_stats"][0]
        assert (stats["base_calls"], stats["shortcut_calls"]) == (2, 4)
    finally:
        backends.PATH_LOADERS.remove(load_fake)
        backends.PATH_DESCRIBERS.remove(describe_fake)
