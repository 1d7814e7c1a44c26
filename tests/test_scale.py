"""Recording and fitting at scale (issue 5), on tiny random generators.

* data parallel: ``torchrun`` with 2 processes (gloo, CPU) ends with the same weights as 1 process over the same
  global batch (atol 1e-5: only the order of float sums differs);
* a fit killed with SIGKILL mid-training and resumed from its checkpoint ends with the same weights as an
  uninterrupted run (atol 1e-6; same thread count, so in practice bit-identical);
* a truncated or corrupted shard is reported by name; the fitter refuses or skips it (flag); the recorder sets
  it aside as ``*.bad`` and records that batch again without touching the other shards;
* the recorder's peak RSS does not grow with the number of trajectories (one subprocess: 10 images, then 90
  more; the data written is ~95 MB, the allowed growth 25 MB);
* two recorder processes with ranks 0 and 1 fill one folder: every batch exactly once, and the shards are the
  same bytes as a single-process recording;
* memory-mapped and in-memory data give the same weights; rollout, KL and bf16 autocast run; online fitting
  stores nothing and resumes exactly; Lumina-DiMOO rows get back the Context of their recording.

Subprocesses run with one thread (OMP_NUM_THREADS=1) and ``nice``-friendly sizes: the whole file takes well
under a minute of CPU time.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, tiny_generator
from shortcut_core import Condition, SamplerSettings, ShortcutError, load_generator, load_shortcut, save_generator
from shortcut_core.fitting import (BatchContexts, FitSettings, OnlineSettings, RunOptions, TrajectorySamples,
                                   _DatasetStore, fit_shortcut, fit_shortcut_online, load_checkpoint)
from shortcut_core.recording import (ConditionSchedule, TrajectoryDataset, dataset_summary, estimate_recording,
                                     load_index, record, trajectory_bytes)
from shortcut_core.shortcut import ShortcutConfig
from shortcut_core.weights import save_shortcut

SETTINGS = SamplerSettings(steps=5, cfg_scale=1.5, seed=0)
FIT = dict(steps=30, batch_size=8, lr=1e-3, ema=0.9, eval_every=15, lr_drop_step=20, val_fraction=0.25)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SCRIPTS = ROOT / "train"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny generator and a 12-trajectory dataset recorded from it."""
    base = tmp_path_factory.mktemp("scale")
    path = base / "tiny.safetensors"
    save_generator(path, tiny_generator(identity="tiny-scale"))
    generator = load_generator(str(path), device="cpu")
    torch.set_num_threads(1)
    record(generator, base / "data", [Condition(labels=[i, i + 1]) for i in range(0, 6, 2)], SETTINGS)
    return path, base / "data", generator


def config() -> ShortcutConfig:
    return ShortcutConfig(feature_dim=64, num_heads=1)  # what the script builds for width 32


def fit_args(data: Path, generator: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--generator", str(generator), "--out", str(out), "--steps", str(FIT["steps"]),
            "--batch-size", str(FIT["batch_size"]), "--lr", str(FIT["lr"]), "--ema", str(FIT["ema"]),
            "--eval-every", str(FIT["eval_every"]), "--lr-drop-step", str(FIT["lr_drop_step"]),
            "--val-fraction", str(FIT["val_fraction"]), "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(saved):
    """The uninterrupted one-process fit every other run is compared with."""
    _, data, generator = saved
    torch.set_num_threads(1)
    network, report = fit_shortcut(generator, TrajectoryDataset(data), config(), FitSettings(**FIT),
                                   run=RunOptions(progress=False))
    return {k: v.detach().clone() for k, v in network.network.state_dict().items()}, report


def without_key_bias(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """An attention's packed q/k/v bias without its key third. Adding a constant to every key shifts all logits of a
    query equally, so softmax cancels it: its true gradient is zero, and AdamW turns the float rounding left in it
    into lr-sized steps that differ with the order of the sums (measured: 2e-5 apart after the fit, the other
    parameters within 1e-5). It never changes an output, so it is left out of the comparison."""
    if not key.endswith("in_proj_bias"):
        return tensor
    q, _, v = tensor.chunk(3)
    return torch.cat([q, v])


def assert_same_weights(state: dict, expected: dict, atol: float, ignore_key_bias: bool = False) -> None:
    assert state.keys() == expected.keys()
    for key in expected:
        got, want = state[key].float(), expected[key].float()
        if ignore_key_bias:
            got, want = without_key_bias(key, got), without_key_bias(key, want)
        torch.testing.assert_close(got, want, atol=atol, rtol=0, msg=key)


# ------------------------------------------------------------------------------------------------------------
# data parallel, checkpoints


def test_torchrun_two_processes_match_one_process_over_the_same_global_batch(saved, reference, tmp_path):
    generator_path, data, _ = saved
    out = tmp_path / "ddp.safetensors"
    log = tmp_path / "ddp.jsonl"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                          str(29500 + os.getpid() % 500), str(SCRIPTS / "fit_shortcut.py"),
                          *fit_args(data, generator_path, out, "--log-file", str(log), "--data-in-memory", "no")],
                         capture_output=True, text=True, timeout=600, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 2 and report["steps_done"] == FIT["steps"]
    expected, expected_report = reference
    assert_same_weights(load_file(str(out)), expected, atol=1e-5, ignore_key_bias=True)
    assert report["val_mse"] == pytest.approx(expected_report["val_mse"], rel=1e-4)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [15, 30]
    assert load_shortcut(out, load_generator(str(generator_path), device="cpu")) is not None  # no flags needed


def test_fit_killed_with_sigkill_and_resumed_ends_like_an_uninterrupted_run(saved, reference, tmp_path):
    generator_path, data, _ = saved
    out, ckpt = tmp_path / "resumed.safetensors", tmp_path / "fit.ckpt"
    args = [sys.executable, str(SCRIPTS / "fit_shortcut.py"),
            *fit_args(data, generator_path, out, "--checkpoint", str(ckpt), "--checkpoint-every", "5")]
    # test wrapper: the run prints each checkpoint's step and every training step takes >= 30 ms, so the kill
    # (0.1 s after the step-10 checkpoint) lands between two checkpoints, whatever the machine's speed
    wrapper = ("import runpy, sys, time\n"
               f"sys.path.insert(0, {str(ROOT)!r})\n"
               "import shortcut_core.fitting.data as data, shortcut_core.fitting.loop as loop\n"
               "save, views = loop.save_checkpoint, data.step_views\n"
               "def announce(path, state):\n"
               "    save(path, state)\n"
               "    print('CKPT', state['step'], flush=True)\n"
               "def slow_views(*args):\n"
               "    time.sleep(0.03)\n"
               "    return views(*args)\n"
               "loop.save_checkpoint, data.step_views = announce, slow_views\n"
               "sys.argv = sys.argv[1:]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *args[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=ENV, text=True)
    for line in proc.stdout:
        if line.startswith("CKPT") and int(line.split()[1]) >= 10:
            time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # killed before the end: nothing exported
    state = load_checkpoint(ckpt)
    assert 10 <= state["step"] < FIT["steps"]
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    report = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert report["steps_done"] == FIT["steps"] and report["complete"]
    assert_same_weights(load_file(str(out)), reference[0], atol=1e-6)


def test_max_steps_stops_and_resume_continues_exactly_with_memory_mapped_data(saved, reference, tmp_path):
    _, data, generator = saved
    ckpt = tmp_path / "part.ckpt"
    run = RunOptions(checkpoint=ckpt, checkpoint_every=0, max_steps=12, progress=False, data_in_memory="yes")
    network, report = fit_shortcut(generator, TrajectoryDataset(data), config(), FitSettings(**FIT), run=run)
    assert report["steps_done"] == 12 and not report["complete"] and load_checkpoint(ckpt)["step"] == 12
    run = RunOptions(checkpoint=ckpt, resume=True, progress=False, data_in_memory="no")
    network, report = fit_shortcut(generator, TrajectoryDataset(data), config(), FitSettings(**FIT), run=run)
    assert report["complete"] and report["data_mode"] == "memory-mapped"
    assert_same_weights(network.network.state_dict(), reference[0], atol=0)
    with pytest.raises(ShortcutError, match="other settings"):
        fit_shortcut(generator, TrajectoryDataset(data), config(), FitSettings(**{**FIT, "lr": 5e-4}),
                     run=RunOptions(checkpoint=ckpt, resume=True, progress=False))
    _, report = fit_shortcut(generator, TrajectoryDataset(data), config(), FitSettings(**FIT),
                             run=RunOptions(max_minutes=0, progress=False))
    assert report["steps_done"] == 1 and report["stopped_early"]  # --max-minutes: stops after the step it ran out


def test_rollout_kl_and_bf16_autocast_train_the_same_on_both_readers(saved):
    _, data, generator = saved
    settings = FitSettings(**{**FIT, "steps": 6, "eval_every": 6, "rollout": 2, "kl_weight": 0.5,
                              "kl_temperature": 2.0, "loss_positions": "all"})
    states = []
    for mode in ("yes", "no"):
        network, report = fit_shortcut(generator, TrajectoryDataset(data), config(), settings,
                                       run=RunOptions(progress=False, data_in_memory=mode))
        assert report["train_pairs"] == 9 * (SETTINGS.steps - 2)  # 9 train trajectories, starts 0..S-3
        states.append(network.network.state_dict())
    assert_same_weights(states[0], states[1], atol=0)
    _, report = fit_shortcut(generator, TrajectoryDataset(data), config(),
                             FitSettings(**{**FIT, "steps": 4, "eval_every": 4, "amp": "bf16"}),
                             run=RunOptions(progress=False))
    assert report["val_mse"] == report["val_mse"]  # finite, not NaN


# ------------------------------------------------------------------------------------------------------------
# damaged shards


def test_damaged_shards_are_named_then_refused_or_skipped_and_the_recorder_redoes_only_them(saved, tmp_path):
    generator_path, data, generator = saved
    folder = tmp_path / "copy"
    shutil.copytree(data, folder)
    shards = sorted(folder.glob("shard-*.safetensors"))
    untouched = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards[1:]}
    good = shards[0].read_bytes()
    with open(shards[0], "r+b") as handle:  # truncated
        handle.truncate(len(good) - 1000)
    with pytest.raises(ShortcutError, match=re.escape(shards[0].name)):
        TrajectoryDataset(folder)
    skipped = TrajectoryDataset(folder, on_bad="skip")
    assert [b for b, _ in skipped.bad_shards] == [shards[0].name] and len(skipped) == 8
    _, report = fit_shortcut(generator, skipped, config(), FitSettings(**{**FIT, "steps": 2, "eval_every": 2}),
                             run=RunOptions(progress=False))
    assert report["skipped_shards"] == [shards[0].name]
    out = tmp_path / "skip.safetensors"
    run = subprocess.run([sys.executable, str(SCRIPTS / "fit_shortcut.py"),
                          *fit_args(folder, generator_path, out)], capture_output=True, text=True, timeout=300,
                         env=ENV)
    assert run.returncode == 2 and shards[0].name in run.stderr and "--bad-shards skip" in run.stderr
    assert not out.exists()
    # same size, flipped bytes inside the data: only the CRC32 check sees it
    shards[0].write_bytes(good)
    flipped = bytearray(untouched[shards[2].name][1])
    flipped[-5000:-4990] = bytes(b ^ 0xFF for b in flipped[-5000:-4990])
    shards[2].write_bytes(bytes(flipped))
    TrajectoryDataset(folder)  # size and header are fine
    with pytest.raises(ShortcutError, match=re.escape(shards[2].name) + ".*CRC32"):
        TrajectoryDataset(folder, verify=True)
    # the recorder (verify) sets the damaged shard aside and records only that batch again
    index = record(generator, folder, [Condition(labels=[i, i + 1]) for i in range(0, 6, 2)], SETTINGS, verify=True)
    assert index["trajectories"] == 12 and len(index["shards"]) == 3
    assert (folder / (shards[2].name + ".bad")).exists()
    assert shards[2].read_bytes() == untouched[shards[2].name][1]  # recorded again: the same bytes
    assert shards[1].stat().st_mtime_ns == untouched[shards[1].name][0]
    assert len(TrajectoryDataset(folder, verify=True)) == 12


# ------------------------------------------------------------------------------------------------------------
# recorder at scale


RSS_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
import torch
from conftest import tiny_generator
from shortcut_core import SamplerSettings
from shortcut_core.recording import ConditionSchedule, record
torch.manual_seed(0)
gen = tiny_generator(grid=16, identity="tiny-rss")
settings = SamplerSettings(steps=8, cfg_scale=1.5, seed=0)
peaks = []
for count in (10, 100):
    record(gen, sys.argv[2], ConditionSchedule(gen, count, 10), settings, storage="fp32")
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps(peaks))
"""


def test_recorder_peak_memory_does_not_grow_with_the_number_of_trajectories(tmp_path):
    folder = tmp_path / "rss"
    run = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(ROOT), str(folder)], capture_output=True,
                         text=True, timeout=600, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    after_10, after_100 = json.loads(run.stdout.strip().splitlines()[-1])
    summary = dataset_summary(folder)
    assert summary["trajectories"] == 200
    per_trajectory = 8 * 257 * 64 * 4
    written_after_10 = 20 * per_trajectory
    growth = after_100 - after_10
    print(f"\nrecorder peak RSS: {after_10 / 2**20:.1f} MiB after 20 trajectories, {after_100 / 2**20:.1f} MiB after "
          f"200 ({summary['bytes'] / 2**20:.1f} MiB on disk)")
    assert summary["bytes"] - written_after_10 > 90 * 2**20  # what holding everything would have added
    assert growth < 25 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MiB from 20 to 200 trajectories"


def test_two_recorder_ranks_fill_one_folder_without_duplicates(saved, tmp_path):
    generator_path, _, generator = saved
    folder = tmp_path / "ranks"
    common = [sys.executable, str(SCRIPTS / "record_trajectories.py"), "--generator", str(generator_path), "--out",
              str(folder), "--count", "10", "--batch", "2", "--steps", "5", "--cfg", "1.5", "--seed", "7",
              "--device", "cpu", "--world-size", "2"]
    procs = [subprocess.Popen([*common, "--rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                              text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "bytes per trajectory" in out and "free" in out  # the estimate is printed before starting
    assert (folder / "index.json").exists() and (folder / "index-r01.json").exists()
    index = load_index(folder)
    batches = [s["batch_index"] for s in index["shards"]]
    assert batches == list(range(5)) and index["trajectories"] == 20
    for shard in index["shards"]:
        assert shard["file"].startswith(f"shard-r{shard['batch_index'] % 2:02d}-")
    dataset = TrajectoryDataset(folder)
    assert len(dataset) == 20
    keys = [(info["batch_index"], info["image"], info["branch"]) for _, _, info in dataset.entries]
    assert len(set(keys)) == 20
    # the same shards, byte for byte, as one process recording everything
    single = tmp_path / "single"
    conditions = ConditionSchedule(generator, 10, 2)
    record(generator, single, conditions, SamplerSettings(**{**SETTINGS.__dict__, "seed": 7}))
    for shard in index["shards"]:
        assert (folder / shard["file"]).read_bytes() == \
            (single / f"shard-r00-{shard['batch_index']:06d}.safetensors").read_bytes()
    # a rerun of rank 1 has nothing left to do; another generator is refused
    again = subprocess.run([*common, "--rank", "1"], capture_output=True, text=True, timeout=300, env=ENV)
    assert again.returncode == 0 and "records 0 batches" in again.stdout


def test_disk_estimate_matches_the_shards_and_a_full_disk_is_refused(saved, tmp_path, monkeypatch):
    _, _, generator = saved
    conditions = ConditionSchedule(generator, 6, 3)
    plan = estimate_recording(generator, conditions, SETTINGS, "fp16", [0, 1])
    assert plan["sequence"] == generator.num_tokens + 1 and plan["trajectories"] == 12
    folder = tmp_path / "est"
    index = record(generator, folder, conditions, SETTINGS)
    actual = index["bytes"] / index["trajectories"]
    payload = trajectory_bytes(SETTINGS.steps, 65, 64, 64, "fp16") - 640
    assert payload < actual <= plan["bytes_per_trajectory"]
    import shortcut_core.recording as recording
    monkeypatch.setattr(recording, "free_disk_bytes", lambda folder: 10_000)
    with pytest.raises(ShortcutError, match="not enough disk space"):
        record(generator, tmp_path / "full", conditions, SETTINGS)
    assert not list((tmp_path / "full").glob("shard-*"))
    record(generator, tmp_path / "forced", ConditionSchedule(generator, 2, 2), SETTINGS, check_disk=False)


def test_a_shard_renamed_into_place_but_not_indexed_is_adopted_not_recorded_again(saved, tmp_path):
    _, _, generator = saved
    folder = tmp_path / "killed"
    conditions = ConditionSchedule(generator, 6, 2)
    record(generator, folder, conditions, SETTINGS)
    index = json.loads((folder / "index.json").read_text())
    last = index["shards"].pop()  # as if killed between the shard's rename and the index update
    index["trajectories"] -= last["trajectories"]
    index["bytes"] -= last["bytes"]
    (folder / "index.json").write_text(json.dumps(index))
    (folder / ".shard-r00-000009.safetensors.abc.tmp").write_bytes(b"partial")  # a killed write's temporary
    before = (folder / last["file"]).stat().st_mtime_ns
    messages = []
    merged = record(generator, folder, conditions, SETTINGS, announce=messages.append)
    assert merged["trajectories"] == 12 and any("adopted" in m for m in messages)
    assert (folder / last["file"]).stat().st_mtime_ns == before
    assert not list(folder.glob("*.tmp"))


# ------------------------------------------------------------------------------------------------------------
# online


def test_online_fit_stores_nothing_and_resumes_exactly(saved, tmp_path):
    _, _, generator = saved
    conditions = ConditionSchedule(generator, None, 2)
    sampler = SamplerSettings(steps=5, cfg_scale=1.5, seed=50)
    online = OnlineSettings(batch=2, buffer=2, refresh_every=3, val_batches=1)
    settings = FitSettings(**{**FIT, "steps": 8, "eval_every": 8})
    work = tmp_path / "online"
    work.mkdir()
    network, report = fit_shortcut_online(generator, conditions, sampler, config(), settings, online,
                                          run=RunOptions(progress=False))
    assert list(work.iterdir()) == [] and report["val_pairs"] == 4 * (5 - 1)
    assert report["sampler_runs"] == 1 + 2 + (8 - 1) // 3  # validation + initial buffer + refreshes
    ckpt = work / "online.ckpt"
    fit_shortcut_online(generator, conditions, sampler, config(), settings, online,
                        run=RunOptions(progress=False, checkpoint=ckpt, max_steps=4))
    resumed, _ = fit_shortcut_online(generator, conditions, sampler, config(), settings, online,
                                     run=RunOptions(progress=False, checkpoint=ckpt, resume=True))
    assert sorted(p.name for p in work.iterdir()) == ["online.ckpt"]
    assert_same_weights(resumed.network.state_dict(), network.network.state_dict(), atol=0)


# ------------------------------------------------------------------------------------------------------------
# Lumina-DiMOO: per-row contexts from the recorded prompts


class WordTokenizer:
    """Whitespace/punctuation words to ids 1..29 (stable hash); the DiMOO tags to their special ids."""

    SPECIAL = {"<system>": 32, "</system>": 33, "<user>": 34, "</user>": 35, "<uncondition>": 39}

    def __call__(self, text: str) -> dict:
        ids = []
        for piece in re.findall(r"</?\w+>|<uncondition>|\w+|[^\w\s]", text):
            ids.append(self.SPECIAL.get(piece, 1 + zlib.crc32(piece.encode()) % 29))
        return {"input_ids": ids}


def tiny_dimoo():
    from shortcut_core.backends.dimoo import DimooGenerator, DimooTokens, LLaDAConfig, LLaDATransformer
    torch.manual_seed(3)
    transformer = LLaDATransformer(LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=4, n_layers=1, mlp_hidden_size=64,
                                               embedding_size=58))
    tokens = DimooTokens(mask=36, newline=30, boi=37, eoi=38, boa=40, eoa=41, uncondition=39, image_token_offset=42,
                         pad=31)
    generator = DimooGenerator(transformer, None, WordTokenizer(), tokens, identity="tiny-dimoo-scale",
                               image_size=(96, 64), codebook_size=16, vq_scale=16)
    return generator.eval().requires_grad_(False)


def test_dimoo_rows_get_back_their_recording_context_and_fit(tmp_path):
    generator = tiny_dimoo()
    settings = SamplerSettings(**{**{k: v for k, v in generator.default_settings.items()
                                     if k in SamplerSettings.__dataclass_fields__}, "steps": 6, "seed": 3})
    conditions = [Condition(prompts=["a red cat", "a small house on green grass"], negative_prompts=["blur", "blur"]),
                  Condition(prompts=["photo of a dog", "cat"])]
    record(generator, tmp_path / "data", conditions, settings)
    dataset = TrajectoryDataset(tmp_path / "data")
    samples = TrajectorySamples(_DatasetStore(dataset, range(len(dataset))), torch.device("cpu"))
    batch = samples.batch(torch.tensor([n * (settings.steps - 1) + 2 for n in range(len(dataset))]))
    ctx = BatchContexts(generator, guidance=True)(batch)
    assert ctx.padding is not None and ctx.rows == 8  # prompts of different lengths: ragged rows
    new = generator.new_tokens(batch["codes"], batch["new_map"], ctx)
    for b, condition in enumerate(conditions):  # rows of shard b: [cond image 0, cond image 1, uncond 0, uncond 1]
        real = generator.prepare(condition, 2, True)
        rows = slice(4 * b, 4 * b + 4)
        expected = generator.new_tokens(batch["codes"][rows][:2], batch["new_map"][rows][:2], real)
        assert torch.equal(ctx.image_index[rows], real.image_index)
        for r in range(4):
            n = int(expected.valid[r].sum())
            assert int(new.valid[4 * b + r].sum()) == n
            assert torch.equal(new.positions[4 * b + r, :n], expected.positions[r, :n])
            assert torch.equal(new.embeddings[4 * b + r, :n], expected.embeddings[r, :n])
        head = generator.head(batch["prev"][rows], ctx.__class__(4, 1, ctx.device, None,
                                                                 image_index=ctx.image_index[rows]),
                              batch["still_masked"][rows])
        real_head = generator.head(batch["prev"][rows], real, batch["still_masked"][rows][:2])
        where = batch["still_masked"][rows]
        torch.testing.assert_close(head[where], real_head[where])
    network, report = fit_shortcut(generator, dataset, generator.default_shortcut_config(),
                                   FitSettings(steps=4, batch_size=4, lr=1e-3, eval_every=4, val_fraction=0.25,
                                               loss_positions="all"), run=RunOptions(progress=False))
    assert report["val_mse"] == report["val_mse"] and report["data_mode"] == "memory-list"
    out = tmp_path / "dimoo-shortcut.safetensors"
    save_shortcut(out, network)
    assert load_shortcut(out, generator).config.arch == "dimoo"
