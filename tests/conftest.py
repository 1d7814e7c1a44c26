"""Shared test helpers: fixture folders from the environment, and tiny random generators.

Tiny random models stand in for real weights (none can be downloaded here); they exercise the same code
paths with the shapes scaled down.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shortcut_core.backends.maskgit import MaskGITConfig, MaskGITGenerator, MaskTransformer  # noqa: E402
from shortcut_core.backends.vqgan import VQConfig, VQModel  # noqa: E402
from shortcut_core.shortcut import ShortcutConfig, ShortcutNetwork  # noqa: E402
from shortcut_core.weights import ShortcutWeights  # noqa: E402


def fixture_dir() -> Path:
    """The official-code fixtures (``SHORTCUT_FIXTURES``, default tests/fixtures/upstream)."""
    return Path(os.environ.get("SHORTCUT_FIXTURES", ROOT / "tests" / "fixtures" / "upstream"))


@pytest.fixture(scope="session")
def upstream():
    folder = fixture_dir()
    if not (folder / "meta.json").exists():
        pytest.skip(f"no reference fixtures at {folder} (set SHORTCUT_FIXTURES)")
    return folder, json.loads((folder / "meta.json").read_text())


def tiny_generator(seed: int = 0, grid: int = 8, identity: str = "tiny-test") -> MaskGITGenerator:
    torch.manual_seed(seed)
    transformer = MaskTransformer(MaskGITConfig(grid=grid, hidden_dim=64, codebook_size=32, depth=2, heads=4,
                                                mlp_dim=128, nclass=10))
    vq = VQModel(VQConfig(n_embed=32, embed_dim=8, z_channels=8, resolution=grid * 4, ch=32, ch_mult=[1, 2, 2],
                          num_res_blocks=1, attn_resolutions=[]), with_encoder=False)
    return MaskGITGenerator(transformer, vq, identity=identity, class_names=[f"class{i}" for i in range(10)],
                            default_settings={"steps": 8, "cfg_scale": 2.0}).eval()


def tiny_shortcut(seed: int = 1) -> ShortcutNetwork:
    torch.manual_seed(seed)
    return ShortcutNetwork(ShortcutConfig(feature_dim=64, num_heads=4)).eval()


def tiny_weights(seed: int = 1, generator: str = "tiny-test") -> ShortcutWeights:
    return ShortcutWeights(tiny_shortcut(seed), generator_info={"generator": generator})


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest and steady on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny():
    return tiny_generator()
