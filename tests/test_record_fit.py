"""Recording trajectories and fitting shortcut weights end to end on a tiny random generator."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import safe_open

from conftest import ROOT, tiny_generator
from shortcut_core import Condition, SamplerSettings, ShortcutError, load_generator, load_shortcut, sample, save_generator
from shortcut_core.fitting import FitSettings, fit_shortcut
from shortcut_core.recording import TrajectoryDataset, dataset_summary, record
from shortcut_core.shortcut import ShortcutConfig

SETTINGS = SamplerSettings(steps=5, cfg_scale=1.5, seed=0)
CONDITIONS = [Condition(labels=[0, 1]), Condition(labels=[2, 3]), Condition(labels=[4, 5])]


@pytest.fixture
def saved_generator(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_generator(path, tiny_generator(identity="tiny-record"))
    return path


def test_recorded_trajectories_hold_every_step_feature_decode_order_and_tokens(tmp_path, saved_generator):
    generator = load_generator(str(saved_generator), device="cpu")
    folder = tmp_path / "data"
    index = record(generator, folder, CONDITIONS, SETTINGS)
    assert index["trajectories"] == 3 * 2 * 2  # batches x images x CFG branches
    assert dataset_summary(folder)["trajectories"] == 12
    assert dataset_summary(folder)["bytes"] == sum(p.stat().st_size for p in folder.glob("shard-*.safetensors"))
    assert not list(folder.glob("*.tmp"))
    dataset = TrajectoryDataset(folder)
    first = dataset.load(0)
    steps, length = SETTINGS.steps, generator.num_tokens
    assert first["features"].shape == (steps, length + 1, generator.feature_dim)
    assert first["features"].dtype == torch.float16
    assert sorted(first["order"].unique().tolist()) == list(range(steps))
    # the recorded tokens and step-0 feature are what the sampler produces for that seed and class
    rerun_features = []
    result = sample(generator, CONDITIONS[0], SETTINGS, callback=lambda info: rerun_features.append(info.feature))
    assert torch.equal(first["codes"].long(), result.codes[0])
    torch.testing.assert_close(first["features"][0].float(), rerun_features[0][0], atol=2e-3, rtol=1e-3)  # fp16 storage
    assert dataset.entries[2][2]["branch"] == 1 and dataset.entries[0][2]["branch"] == 0


def test_recording_resumes_without_duplicates_and_refuses_another_generator(tmp_path, saved_generator):
    generator = load_generator(str(saved_generator), device="cpu")
    folder = tmp_path / "data"
    record(generator, folder, CONDITIONS[:2], SETTINGS)
    shard = next(folder.glob("shard-*.safetensors"))
    before = shard.stat().st_mtime_ns
    index = record(generator, folder, CONDITIONS, SETTINGS)  # rerun with one more batch: only that one is new
    assert index["trajectories"] == 12 and len(index["shards"]) == 3
    assert shard.stat().st_mtime_ns == before
    with pytest.raises(ShortcutError, match="holds trajectories of generator"):
        record(tiny_generator(identity="someone-else"), folder, CONDITIONS, SETTINGS)
    with pytest.raises(ShortcutError, match="recorded with settings"):
        record(generator, folder, CONDITIONS, SamplerSettings(steps=6, cfg_scale=1.5))


def test_fit_script_writes_weights_that_load_and_sample(tmp_path, saved_generator):
    generator = load_generator(str(saved_generator), device="cpu")
    folder = tmp_path / "data"
    record(generator, folder, CONDITIONS, SETTINGS)
    out = tmp_path / "shortcut.safetensors"
    run = subprocess.run([sys.executable, str(ROOT / "train" / "fit_shortcut.py"), "--data", str(folder),
                          "--generator", str(saved_generator), "--out", str(out), "--steps", "40",
                          "--batch-size", "8", "--lr", "1e-3", "--eval-every", "20", "--ema", "0.9",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["val_trajectories"] >= 1 and report["train_pairs"] > 0
    with safe_open(str(out), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "migm-shortcut" and meta["generator"] == "tiny-record"
    config = json.loads(meta["config"])
    assert config["feature_dim"] == 64 and config["bottleneck_ratio"] == 2 and config["n_blocks"] == 1
    network = load_shortcut(out, generator)
    result = sample(generator, Condition(labels=[1]), SamplerSettings(steps=5, budget=2, cfg_scale=1.5), shortcut=network)
    assert result.shortcut_calls == 3
    with pytest.raises(ShortcutError, match="fitted for generator 'tiny-record'"):
        load_shortcut(out, tiny_generator(identity="other"))


def test_fitting_lowers_validation_error_below_reusing_the_last_feature(tmp_path, saved_generator):
    generator = load_generator(str(saved_generator), device="cpu")
    folder = tmp_path / "data"
    record(generator, folder, CONDITIONS * 2, SETTINGS)
    config = ShortcutConfig(feature_dim=64, num_heads=4)
    network, report = fit_shortcut(generator, TrajectoryDataset(folder), config,
                                   FitSettings(steps=150, batch_size=16, lr=2e-3, ema=0.9, eval_every=150,
                                               lr_drop_step=1000, val_fraction=0.25))
    assert report["val_mse"] < report["val_baseline_mse"]
