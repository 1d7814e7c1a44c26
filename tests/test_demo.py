"""The embedded demo end to end: README's main command, the committed weights, and what a person sees."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import safe_open

from conftest import ROOT
from shortcut_core import (DEMO_GENERATOR, DEMO_SHORTCUT, Condition, SamplerSettings, ShortcutError,
                           load_generator, load_shortcut, sample)

pytestmark = pytest.mark.skipif(not DEMO_GENERATOR.exists(), reason="demo weights not built yet")


@pytest.fixture(scope="module")
def demo():
    return load_generator("demo", device="cpu")


def test_main_command_writes_a_grid_and_a_json_summary(tmp_path):
    out = tmp_path / "out.png"
    run = subprocess.run([sys.executable, "-m", "shortcut_core", "sample", "--generator", "demo", "--steps", "16",
                          "--budget", "6", "--seed", "0", "--batch", "4", "--out", str(out), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["steps"] == 16 and summary["budget"] == 6
    assert summary["full_steps"] == [0, 3, 5, 8, 11, 13]
    assert summary["base_calls"] == 6 and summary["shortcut_calls"] == 10
    assert summary["seconds"] > 0 and summary["base_call_ms"] > summary["shortcut_call_ms"] > 0
    assert summary["images"] == [str(out)]
    image = np.asarray(Image.open(out))
    assert image.shape == (2 * 64 + 2, 2 * 64 + 2, 3)  # 2x2 grid with 2 px gutters
    assert image.std() > 20  # a picture, not a flat fill


def test_bad_input_is_reported_without_a_traceback(tmp_path):
    for args, message in ((["--budget", "20"], "budget must be between 1 and steps (16)"),
                          (["--generator", "nope"], "unknown generator 'nope'"),
                          (["--classes", "11"], "class label 11 is out of range: allowed 0..9")):
        run = subprocess.run([sys.executable, "-m", "shortcut_core", "sample", "--steps", "16", "--out",
                              str(tmp_path / "x.png"), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_demo_shortcut_is_fitted_for_the_demo_and_beats_reusing_the_feature(demo):
    with safe_open(str(DEMO_SHORTCUT), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["generator"] == demo.identity
    training = json.loads(meta["training"])
    assert training["val_mse"] < training["val_baseline_mse"]
    assert training["val_agreement"] > training["val_baseline_agreement"]
    load_shortcut(DEMO_SHORTCUT, demo)


def test_demo_budget_equal_steps_is_vanilla_and_the_shortcut_tracks_vanilla_better_than_reuse(demo):
    shortcut = load_shortcut(DEMO_SHORTCUT, demo)
    condition = Condition(labels=list(range(10)) * 2)
    settings = dict(steps=16, seed=3, cfg_scale=2.0, r_temp=3.0)
    vanilla = sample(demo, condition, SamplerSettings(**settings))
    same = sample(demo, condition, SamplerSettings(budget=16, **settings), shortcut=shortcut)
    assert torch.equal(vanilla.codes, same.codes)
    fast = sample(demo, condition, SamplerSettings(budget=6, **settings), shortcut=shortcut)
    reused = sample(demo, condition, SamplerSettings(budget=6, method="reuse", **settings))
    agreement = (fast.codes == vanilla.codes).float().mean()
    reuse_agreement = (reused.codes == vanilla.codes).float().mean()
    # python -m shortcut_core bench measured 30.0 % vs 14.9 % equal tokens at (16, 6) on 500 images (README, Benchmark)
    assert agreement > reuse_agreement + 0.05


def test_classes_give_different_pictures(demo):
    result = sample(demo, Condition(labels=[0, 1, 2, 3]), SamplerSettings(steps=12, seed=0))
    images = demo.decode(result.codes)
    assert images.shape == (4, 3, 64, 64)
    differences = [(images[i] - images[j]).abs().mean() for i in range(4) for j in range(i + 1, 4)]
    assert min(differences) > 0.02


def test_demo_files_fit_the_size_budget():
    # issue: embedded weights <= 20 MB in all
    assert DEMO_GENERATOR.stat().st_size + DEMO_SHORTCUT.stat().st_size <= 20_000_000
