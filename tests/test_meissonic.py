"""Meissonic backend (issue 17): parity with the official code's golden fixtures, and the pack's paths on a tiny random
Meissonic saved in the published folder layout (nothing is downloaded).

Fixtures: ``tests/fixtures/upstream_meissonic`` (a copy of the shared set, see its PROVENANCE.md), or the folder named
by ``SHORTCUT_FIXTURES_MEISSONIC`` (another set of the same layout, other shapes). Every shape, size, prompt, seed and
tolerance is read from its ``meta.json``; the tolerances are the ones it states (``meta.json`` -> ``tolerance``):
single calls atol/rtol 1e-5, guided logits 1e-4, decoded images 2e-4, integer and boolean tensors exactly.

What is checked against the fixtures: the text path (token ids with the tokenizer's own pad token, ``text_embeds``,
``hidden_states[-2]``), one transformer call (every recorded intermediate, the feature = ``mlm_layer`` input, the
logits, the RoPE tables), the whole 8-step guided run of the official pipeline replayed by our vanilla sampler
(feature and logits of every step, the drawn tokens, the re-masked positions and the tokens after every step,
identical), VQ decode and encode. On the tiny model: loading (fp16 variant, refusals), sizes, vanilla and shortcut
sampling, every baseline, and record -> ``train/fit_shortcut.py`` -> sample.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402

from shortcut_core import sampler as sampler_module  # noqa: E402
from shortcut_core.backends import PATH_LOADERS  # noqa: E402
from shortcut_core.backends.amused import AmusedShortcut  # noqa: E402
from test_amused import build_tiny_amused, write_tokenizer  # noqa: E402
from shortcut_core.backends.meissonic import (DEFAULT_SETTINGS, MeissonicGenerator, MeissonicShortcut,  # noqa: E402
                                              load_meissonic, load_meissonic_path)
from shortcut_core.backends.meissonic_transformer import MeissonicConfig, MeissonicTransformer  # noqa: E402
from shortcut_core.generator import Condition, ShortcutError  # noqa: E402
from shortcut_core.recording import record  # noqa: E402
from shortcut_core.registry import load_generator  # noqa: E402
from shortcut_core.sampler import SamplerSettings, sample, with_overrides  # noqa: E402
from shortcut_core.schedules import tokens_per_step  # noqa: E402
from shortcut_core.shortcut import build_shortcut  # noqa: E402
from shortcut_core.weights import ShortcutWeights, load_shortcut  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("SHORTCUT_FIXTURES_MEISSONIC", ROOT / "tests" / "fixtures" / "upstream_meissonic"))
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "meta.json").is_file(),
                                    reason=f"Meissonic fixtures not found at {FIXTURES} (set SHORTCUT_FIXTURES_MEISSONIC)")
pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red cat", "blue sky", "a dog on grass", "green tree", "an old car", "snow", "a tall tower", "sea",
           "yellow bird", "a small house", "dark forest", "a big ship", "fire", "a white horse", "moon", "a bridge"]


# ------------------------------------------------------------------------------------------------------------
# the official fixtures


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURES / "meta.json").read_text())


@pytest.fixture(scope="module")
def fixture_generator(meta) -> MeissonicGenerator:
    generator = load_generator(str(FIXTURES), device="cpu", dtype="fp32")
    height, width = meta["derived"]["image"]
    generator.set_image_size(width, height)
    return generator


@pytest.fixture(scope="module")
def trajectory_io() -> dict:
    return load_file(str(FIXTURES / "trajectory_io.safetensors"))


def tolerance(meta: dict, kind: str) -> dict:
    return {"atol": meta["tolerance"][kind]["atol"], "rtol": meta["tolerance"][kind]["rtol"]}


def official_settings(meta: dict) -> SamplerSettings:
    """The trajectory's pipeline call as sampler settings: guidance g = 1 + cfg_scale, temperature (t0, t1) or the
    scalar t (upstream: linspace(t, 0.01, N))."""
    run = meta["trajectory"]
    start, end = run["temperature_arg"] if isinstance(run["temperature_arg"], list) else (run["temperature_arg"], 0.01)
    return SamplerSettings(**{**DEFAULT_SETTINGS, "steps": run["num_inference_steps"],
                              "cfg_scale": run["guidance_scale"] - 1, "r_temp": float(start), "r_temp_end": float(end),
                              "seed": run["sampling_seed"]})


def official_condition(meta: dict) -> Condition:
    return Condition(prompts=[meta["trajectory"]["prompt"]], negative_prompts=[meta["trajectory"]["negative_prompt"]])


@needs_fixtures
def test_fixture_files_are_the_published_ones(meta):
    changed = [name for name, digest in meta["sha256"].items()
               if hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() != digest]
    assert not changed


@needs_fixtures
def test_fixture_folder_loads_as_meissonic(meta, fixture_generator):
    generator = fixture_generator
    assert isinstance(generator, MeissonicGenerator) and generator.identity.startswith("meissonic/")
    derived = meta["derived"]
    assert generator.feature_dim == derived["inner_dim"]
    assert (generator.codebook_size, generator.mask_token_id) == (derived["codebook_size"], derived["mask_token_id"])
    assert generator.vq_scale == derived["vae_scale_factor"]
    assert generator.grid_size == tuple(derived["latent_grid"])
    assert generator.default_settings["steps"] == 64 and generator.default_settings["cfg_scale"] == 8.0


@needs_fixtures
def test_text_path_matches_clip_outputs(meta, fixture_generator):
    """77 tokens padded with the tokenizer's own pad token; text_embeds and hidden_states[-2] as the pipeline."""
    text = load_file(str(FIXTURES / "text_io.safetensors"))
    layers = meta["text_encoder_config"]["num_hidden_layers"]
    tol = tolerance(meta, "single_call")
    for branch, prompt in (("cond", meta["trajectory"]["prompt"]), ("uncond", meta["trajectory"]["negative_prompt"])):
        ids = fixture_generator.tokenizer([prompt], padding="max_length", truncation=True,
                                          max_length=fixture_generator.prompt_tokens, return_tensors="pt").input_ids
        assert torch.equal(ids, text[f"{branch}.input_ids"]), branch
        pooled, states = fixture_generator.encode_prompts([prompt])
        torch.testing.assert_close(pooled, text[f"{branch}.text_embeds"], **tol)
        torch.testing.assert_close(states, text[f"{branch}.hidden_states.{layers - 1}"], **tol)  # = [-2]


@needs_fixtures
def test_one_transformer_call_matches_every_intermediate(meta, fixture_generator):
    """The fixture's call, batch [uncond, cond] as the pipeline: intermediates, feature, logits, RoPE, guided logits."""
    io = load_file(str(FIXTURES / "transformer_io.safetensors"))
    model = fixture_generator.transformer
    tol = tolerance(meta, "single_call")
    batch = {key: torch.cat([io[f"uncond.{key}"], io[f"cond.{key}"]])
             for key in ("input_ids", "encoder_hidden_states", "pooled_projections", "micro_conds")}
    seen = {}
    hooks = [module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
             for name, module in model.named_modules()
             if name in ("embed", "context_embedder", "encoder_proj_layer_norm", "down_block", "project_to_hidden",
                         "project_from_hidden", "mlm_layer.conv1", "cond_embed", "time_text_embed")
             or name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and name.count(".") == 1]
    try:
        with torch.no_grad():
            feature = model.feature(batch["input_ids"], batch["encoder_hidden_states"], batch["pooled_projections"],
                                    batch["micro_conds"], io["timestep"])
            logits = model.mlm_layer(feature)
    finally:
        for hook in hooks:
            hook.remove()
    checked = 0
    for row, branch in enumerate(("uncond", "cond")):
        torch.testing.assert_close(feature[row:row + 1], io[f"{branch}.head_input"], **tol)
        torch.testing.assert_close(logits[row:row + 1], io[f"{branch}.logits"], **tol)
        for key in io:
            if not key.startswith(f"{branch}.dbg."):
                continue
            name = key[len(branch) + 5:]
            if name.endswith((".out0", ".out1")):  # dual blocks return (text, image)
                ours = seen[name[:-5]][int(name[-1])]
            elif name.startswith("single_transformer_blocks."):  # ours split [text, image] after each block
                ours = torch.cat(seen[name], dim=1)
            elif name == "mlm_layer.layer_norm" or name == "cond_embed.input":
                continue  # inside mlm_layer / the input of cond_embed: covered by the logits and cond_embed
            else:
                ours = seen[name]
            torch.testing.assert_close(ours[row:row + 1], io[key], **tol, msg=key)
            checked += 1
    assert checked >= 2 * (8 + meta["transformer_config"]["num_layers"] * 2
                           + meta["transformer_config"]["num_single_layers"])
    grid = tuple(meta["derived"]["transformer_token_grid"])
    cos, sin = model.rotary(grid, meta["derived"]["text_seq_len"], torch.device("cpu"))
    assert torch.equal(cos, io["rope.cos"]) and torch.equal(sin, io["rope.sin"])
    guidance = meta["trajectory"]["guidance_scale"]
    guided = logits[:1] + guidance * (logits[1:] - logits[:1])
    torch.testing.assert_close(guided, io["cfg_logits"], **tolerance(meta, "cfg_logits"))


@needs_fixtures
def test_generator_feature_and_head_match_the_call(meta, fixture_generator):
    """Through the contract: prepare (prompts, micro-conditioning), features at the step whose timestep is the
    fixture's, the head on the masked positions only; rows in our order [cond; uncond]."""
    io = load_file(str(FIXTURES / "transformer_io.safetensors"))
    generator, tol = fixture_generator, tolerance(meta, "single_call")
    steps = meta["trajectory"]["num_inference_steps"]
    ctx = generator.prepare(official_condition(meta), 1, True)
    ctx.steps, ctx.step = steps, steps - 1 - meta["transformer_io_setup"]["timestep"]
    ids = io["cond.input_ids"].view(1, -1)
    masked = ids == generator.mask_token_id
    assert int(masked.sum()) == meta["transformer_io_setup"]["masked_positions"]
    with torch.no_grad():
        feature = generator.features(ids.clamp(max=generator.codebook_size - 1), masked, ctx)
        logits = generator.head(feature, ctx, masked)
    torch.testing.assert_close(ctx.micro_conds, torch.cat([io["cond.micro_conds"], io["uncond.micro_conds"]]))
    for row, branch in enumerate(("cond", "uncond")):
        expected = io[f"{branch}.head_input"].flatten(2).transpose(1, 2)
        torch.testing.assert_close(feature[row:row + 1], expected, **tol)
        reference = io[f"{branch}.logits"].flatten(2).transpose(1, 2)[masked]
        torch.testing.assert_close(logits[row][masked[0]], reference, **tol)


@needs_fixtures
def test_vanilla_sampler_replays_the_official_run_token_for_token(meta, fixture_generator, trajectory_io,
                                                                  monkeypatch):
    """The pipeline's run (steps, guidance, seed, temperature, prompts from meta.json) with confidence "meissonic":
    every step's feature, logits and guided logits within tolerance, drawn tokens, re-masked positions and tokens
    after the step identical, then the decoded image."""
    generator, tr = fixture_generator, trajectory_io
    settings = official_settings(meta)
    steps, (height, width) = settings.steps, meta["derived"]["latent_grid"]
    draws, logits_seen, states = [], [], []
    real_step, real_head = sampler_module.meissonic_step, generator.head

    def recording_step(logits, temperature, rng, last):
        out = real_step(logits, temperature, rng, last)
        draws.append((logits, out[0]))
        return out

    def recording_head(feature, ctx, masked):
        out = real_head(feature, ctx, masked)
        logits_seen.append(out)
        return out

    monkeypatch.setattr(sampler_module, "meissonic_step", recording_step)
    monkeypatch.setattr(generator, "head", recording_head)
    result = sample(generator, official_condition(meta), settings,
                    callback=lambda info: states.append((info.feature, info.masked.clone(), info.codes.clone(),
                                                         info.new_map.clone())))
    monkeypatch.undo()
    assert result.steps_run == steps and len(states) == steps
    single, guided = tolerance(meta, "single_call"), tolerance(meta, "cfg_logits")
    mask_id = generator.mask_token_id
    before_masked = torch.ones(1, height * width, dtype=torch.bool)
    before_codes = torch.zeros(1, height * width, dtype=torch.long)
    for i, (feature, masked, codes, new_map) in enumerate(states):
        step = f"step{i}."
        state_in = torch.where(before_masked, mask_id, before_codes).view(1, height, width)
        assert torch.equal(state_in, tr[step + "input_ids"]), f"step {i}: input"
        for row, branch in enumerate(("cond", "uncond")):
            expected = tr[f"{step}{branch}.head_input"].flatten(2).transpose(1, 2)
            torch.testing.assert_close(feature[row:row + 1], expected, **single, msg=f"step {i} {branch} feature")
            reference = tr[f"{step}{branch}.logits"].flatten(2).transpose(1, 2)[before_masked]
            torch.testing.assert_close(logits_seen[i][row][before_masked[0]], reference, **single)
        guided_logits, drawn = draws[i]
        reference = tr[step + "cfg_logits"].flatten(2).transpose(1, 2)[before_masked]
        torch.testing.assert_close(guided_logits[before_masked], reference, **guided, msg=f"step {i} guided")
        restored = torch.where(before_masked, drawn, before_codes).view(1, height, width)
        assert torch.equal(restored, tr[step + "sampled"]), f"step {i}: drawn tokens"
        assert torch.equal(masked, tr[step + "remasked"]), f"step {i}: re-masked positions"
        assert torch.equal(new_map, tr[step + "newly_kept"]), f"step {i}: newly kept"
        assert int(masked.sum()) == int(tr[step + "mask_len"].item()) if i < steps - 1 else not masked.any()
        assert torch.equal(torch.where(masked, mask_id, codes).view(1, height, width), tr[step + "output_ids"])
        before_masked, before_codes = masked, codes
    assert torch.equal(result.codes.view(1, height, width), tr["final.ids"])
    stride = meta["trajectory"]["final_image"]["stride_stored"]
    image = generator.decode(result.codes).permute(0, 2, 3, 1)[:, ::stride, ::stride, :]
    torch.testing.assert_close(image, tr["final.image_strided"], **tolerance(meta, "images"))


@needs_fixtures
def test_vq_decode_and_encode_match(meta, fixture_generator):
    vq_io = load_file(str(FIXTURES / "vq_io.safetensors"))
    vq = fixture_generator.vq
    ids = vq_io["decode.ids"]
    shape = (*ids.shape, int(vq.config.latent_channels))
    with torch.no_grad():
        quant = vq.quantize.get_codebook_entry(ids.flatten(), shape)
        image = vq.decode(ids, force_not_quantize=True, shape=shape).sample
        latents = vq.encode(vq_io["decode.image_raw"].clip(0, 1)).latents
        quantized, _, (_, _, indices) = vq.quantize(latents)
    torch.testing.assert_close(quant, vq_io["decode.quant"], **tolerance(meta, "single_call"))
    torch.testing.assert_close(image, vq_io["decode.image_raw"], **tolerance(meta, "images"))
    torch.testing.assert_close(latents, vq_io["encode.latents"], **tolerance(meta, "single_call"))
    assert torch.equal(indices.view(vq_io["encode.indices"].shape), vq_io["encode.indices"])
    torch.testing.assert_close(quantized, vq_io["encode.quantized"], **tolerance(meta, "single_call"))


@needs_fixtures
def test_keep_count_rule_is_the_official_schedule(meta, trajectory_io):
    """schedule "amused_cosine" = the official keep-count rule: the fixture's run and the real sizes in meta.json."""
    steps = meta["trajectory"]["num_inference_steps"]
    length = meta["derived"]["latent_grid"][0] * meta["derived"]["latent_grid"][1]
    kept = [step["n_newly_kept"] for step in meta["trajectory"]["steps"]]
    assert tokens_per_step(steps, length, "amused_cosine") == kept
    for key, table in meta["official_schedule_real_sizes"].items():
        n, tokens = (int(part.split("=")[1]) for part in key.split(","))
        remaining = tokens - torch.tensor(tokens_per_step(n, tokens, "amused_cosine")).cumsum(0)
        assert remaining.tolist() == table["n_masked_after_each_step"], key
        torch.testing.assert_close(torch.linspace(2, 0, n), torch.tensor(table["temperatures"]), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# a tiny random Meissonic in the published layout


TINY = dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=8, joint_attention_dim=16,
            pooled_projection_dim=16, axes_dims_rope=[2, 2, 4], vocab_size=40, codebook_size=32, downsample=True,
            upsample=True)
MASK_ID = 39


def build_tiny_meissonic(folder: Path, seed: int = 0) -> Path:
    """model_index.json, transformer/, vqvae/ (7 levels: 64 px per code, so 1024 px = 16 x 16 codes, 8 x 8 transformer
    tokens), text_encoder/, tokenizer/, scheduler/, as the official ``Pipeline.save_pretrained`` writes them."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transformer").mkdir(exist_ok=True)
    config = {"_class_name": "Transformer2DModel", "_diffusers_version": "0.31.0", "patch_size": 1,
              "in_channels": 64, "guidance_embeds": False, **TINY}
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))
    model = MeissonicTransformer(MeissonicConfig.from_dict(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    VQModel(act_fn="silu", block_out_channels=[4, 4, 8, 8, 8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 7,
            up_block_types=["UpDecoderBlock2D"] * 7, in_channels=3, out_channels=3, latent_channels=8,
            layers_per_block=1, norm_num_groups=4, num_vq_embeddings=32, sample_size=32,
            mid_block_add_attention=False, lookup_from_codebook=True).save_pretrained(folder / "vqvae")
    CLIPTextModelWithProjection(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=64, projection_dim=16, max_position_embeddings=77,
    )).save_pretrained(folder / "text_encoder")
    write_tokenizer(folder / "tokenizer")  # aMUSEd's tiny tokenizer: Meissonic pads to 77 whatever its maximum
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "Scheduler", "_diffusers_version": "0.31.0", "mask_token_id": MASK_ID,
         "masking_schedule": "cosine"}))
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "Pipeline", "_diffusers_version": "0.31.0", "scheduler": ["src.scheduler", "Scheduler"],
         "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
         "transformer": ["src.transformer", "Transformer2DModel"], "vqvae": ["diffusers", "VQModel"]}))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_meissonic(tmp_path_factory.mktemp("meissonic") / "Meissonic")


@pytest.fixture(scope="module")
def generator(folder) -> MeissonicGenerator:
    return load_generator(str(folder), device="cpu", dtype="fp32")


def settings_for(generator, **overrides) -> SamplerSettings:
    return with_overrides(SamplerSettings.for_generator(generator), **overrides)


def test_tiny_folder_loads_and_fp16_variant_is_the_same_generator(folder, generator, tmp_path):
    assert isinstance(generator, MeissonicGenerator) and generator.identity.startswith("meissonic/")
    assert (generator.feature_dim, generator.codebook_size, generator.mask_token_id) == (16, 32, MASK_ID)
    assert generator.image_size == (1024, 1024) and generator.grid_size == (16, 16)
    ctx = generator.prepare(Condition(prompts=["moon"]), 1, False)
    assert ctx.encoder_hidden_states.shape == (1, 77, 16)  # 77 tokens, not the tokenizer's maximum (16)
    assert next(generator.vq.parameters()).dtype == torch.float32
    assert any(loader(folder, torch.device("cpu"), torch.float32) is not None for loader in PATH_LOADERS)

    half = tmp_path / "fp16"
    half.mkdir()
    for name in ("tokenizer", "scheduler", "vqvae", "text_encoder"):
        (half / name).mkdir()
        for file in (folder / name).iterdir():
            (half / name / file.name).write_bytes(file.read_bytes())
    (half / "transformer").mkdir()
    (half / "transformer" / "config.json").write_bytes((folder / "transformer" / "config.json").read_bytes())
    state = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    save_file({k: v.half() for k, v in state.items()}, str(half / "transformer" / "diffusion_pytorch_model.fp16.safetensors"))
    loaded = load_generator(str(half), device="cpu", dtype="fp32")
    assert loaded.identity == generator.identity
    assert loaded.transformer.embed.embeddings.weight.dtype == torch.float32


def test_loading_refuses_folders_that_are_not_meissonic(folder, tmp_path):
    amused = build_tiny_amused(tmp_path / "amused")
    assert load_meissonic_path(amused, "cpu", torch.float32) is None  # the registry's other loaders go on
    with pytest.raises(ShortcutError, match="not a Meissonic model: transformer/config.json describes a UVit2DModel"):
        load_meissonic(amused)
    dit = tmp_path / "dit"
    (dit / "transformer").mkdir(parents=True)
    (dit / "transformer" / "config.json").write_text(json.dumps({"_class_name": "Transformer2DModel",
                                                                 "num_layers": 28, "sample_size": 32}))
    assert load_meissonic_path(dit, "cpu", torch.float32) is None
    with pytest.raises(ShortcutError, match="Transformer2DModel without num_single_layers, axes_dims_rope"):
        load_meissonic(dit)
    with pytest.raises(ShortcutError, match="no transformer/config.json"):
        load_meissonic(tmp_path)
    broken = tmp_path / "broken"
    (broken / "transformer").mkdir(parents=True)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (broken / "transformer" / "config.json").write_text(json.dumps({**config, "pooled_projection_dim": 12}))
    with pytest.raises(ShortcutError, match="pooled_projection_dim 12 must equal"):
        load_meissonic(broken)


def test_sizes_other_than_1024_high_work_and_positions_follow_the_grid(generator):
    """The official pipeline fails for a height other than 1024 px with this model; here the RoPE grid is the one
    the transformer runs on. Non-multiples of 2 x the VQ scale are refused before any work."""
    try:
        generator.set_image_size(512, 768)
        assert generator.grid_size == (12, 8)
        ctx = generator.prepare(Condition(prompts=["a red cat"]), 1, True)
        with torch.no_grad():
            feature = generator.features(torch.zeros(1, 96, dtype=torch.long), torch.ones(1, 96, dtype=torch.bool), ctx)
        assert feature.shape == (2, 96, 16)
        cos, _ = generator.transformer.rotary((6, 4), 77, torch.device("cpu"))
        assert cos.shape == (77 + 24, 8)
        result = sample(generator, Condition(prompts=["snow"]), settings_for(generator, steps=4, seed=1))
        assert result.codes.shape == (1, 96)
        assert ctx.micro_conds[0].tolist() == [512.0, 768.0, 0.0, 0.0, 6.0]
        with pytest.raises(ShortcutError, match="height must be a positive multiple of 128 px for this Meissonic"):
            generator.set_image_size(512, 1000)
    finally:
        generator.set_image_size(1024, 1024)


def test_timestep_is_the_step_index_counted_down(generator):
    """The transformer is fed N - 1 - i: the feature at step i of N is the same wherever the run has N steps."""
    ctx = generator.prepare(Condition(prompts=["moon"]), 1, False)
    codes, masked = torch.zeros(1, 256, dtype=torch.long), torch.ones(1, 256, dtype=torch.bool)
    with torch.no_grad():
        ctx.step, ctx.steps = 2, 8
        a = generator.features(codes, masked, ctx)
        ctx.step, ctx.steps = 6, 12
        b = generator.features(codes, masked, ctx)
        ctx.step = 7
        c = generator.features(codes, masked, ctx)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_vanilla_shortcut_and_every_baseline_sample(generator):
    torch.manual_seed(4)
    net = build_shortcut(generator.default_shortcut_config()).eval()
    assert isinstance(net, MeissonicShortcut) and isinstance(net, AmusedShortcut) and net.config.arch == "meissonic"
    net = ShortcutWeights(net)
    condition = Condition(prompts=["a red cat", "snow"], negative_prompts=["blurry"])
    vanilla = sample(generator, condition, settings_for(generator, steps=8, seed=3))
    same = sample(generator, condition, settings_for(generator, steps=8, budget=8, seed=3), shortcut=net)
    assert torch.equal(vanilla.codes, same.codes) and same.shortcut_calls == 0
    fast = sample(generator, condition, settings_for(generator, steps=8, budget=3, seed=3), shortcut=net)
    assert (fast.base_calls, fast.shortcut_calls) == (3, 5)
    assert fast.codes.shape == (2, 256) and int(fast.codes.max()) < 32
    with pytest.raises(ShortcutError, match="r_temp_end must be a finite number >= 0, got -0.5"):
        settings_for(generator, r_temp_end=-0.5).validate()
    for method in ("fewer_steps", "reuse", "taylor1", "taylor2"):
        run = sample(generator, condition, settings_for(generator, steps=8, budget=3, seed=3, method=method))
        assert run.base_calls == 3 and bool((run.decode_order >= 0).all()), method
    images = generator.decode(fast.codes)
    assert images.shape == (2, 3, 1024, 1024) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_record_fit_sample_end_to_end(folder, generator, tmp_path):
    """Record on the tiny model, fit with train/fit_shortcut.py, sample with the fitted weights; the fitted shortcut
    must predict the next feature better than reusing the last one on held-out trajectories."""
    steps = 8
    data = tmp_path / "trajectories"
    settings = settings_for(generator, steps=steps, seed=100)
    conditions = [Condition(prompts=PROMPTS[i:i + 4]) for i in range(0, len(PROMPTS), 4)]
    index = record(generator, data, conditions, settings, storage="fp32")
    assert index["trajectories"] == 2 * len(PROMPTS)

    out = tmp_path / "meissonic-shortcut.safetensors"
    run = subprocess.run([sys.executable, str(ROOT / "train" / "fit_shortcut.py"), "--data", str(data),
                          "--generator", str(folder), "--out", str(out), "--steps", "300", "--batch-size", "16",
                          "--lr", "2e-3", "--lr-drop-step", "250", "--eval-every", "300", "--ema", "0.95",
                          "--val-fraction", "0.25", "--device", "cpu", "--no-progress"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print("\nMeissonic fit report:", json.dumps({k: report[k] for k in (
        "train_trajectories", "val_trajectories", "val_pairs", "seconds", "val_mse", "val_baseline_mse",
        "val_agreement", "val_baseline_agreement")}))
    assert report["val_trajectories"] == 8
    assert report["val_mse"] < report["val_baseline_mse"]

    network = load_shortcut(out, generator)
    assert isinstance(network.network, MeissonicShortcut)
    condition = Condition(prompts=["a red cat", "green tree"])
    vanilla = sample(generator, condition, settings_for(generator, steps=steps, seed=5))
    fast = sample(generator, condition, settings_for(generator, steps=steps, budget=4, seed=5), shortcut=network)
    assert (fast.base_calls, fast.shortcut_calls) == (4, 4)
    agreement = float((fast.codes == vanilla.codes).float().mean())
    print(f"Meissonic tiny: tokens equal to vanilla at the same seed with budget 4/{steps}: {agreement:.3f}")
