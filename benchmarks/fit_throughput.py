"""Fitting throughput (samples/s) for 1 vs 2 processes on CPU, and recorder bytes per trajectory.

    python benchmarks/fit_throughput.py [--steps 60] [--batch-size 32] [--json out.json]

Throughput: a demo-shaped dataset (16 x 16 tokens + class token = 257 positions, width 128, 16 steps) is recorded
from the embedded demo generator when it exists, otherwise from a random generator of the same shapes (fitting
only reads the base model's token embedding and head, so its depth does not matter). Then
``train/fit_shortcut.py`` runs the same global batch as 1 process (1 and 2 threads) and under
``torch.distributed.run --nproc_per_node=2`` (gloo, 1 thread each); samples/s is the median of the JSONL log's
training windows (evaluation excluded).

Bytes per trajectory (one image, one CFG branch): steps x sequence x width x 2 bytes (fp16/bf16) plus decode
order (int16) and codes (int32) per image token and the shard header, computed from the real configurations:
the demo (measured on the recorded shards as well), MaskGIT-512 (valeoai Maskgit-pytorch: 32 x 32 tokens + class
token, width 768, 15 steps) and Lumina-DiMOO 1024 x 1024 (LLaDA-8B width 4096, 64 x 64 image tokens in
64 rows of 64 + newline, boa/boi/eoi/eoa, plus the prompt: 64 steps).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shortcut_core.recording import ConditionSchedule, HEADER_BYTES_PER_TRAJECTORY, record, trajectory_bytes  # noqa: E402
from shortcut_core.registry import DEMO_GENERATOR, load_generator, save_generator  # noqa: E402
from shortcut_core.outputs import check_output_file, write_text  # noqa: E402
from shortcut_core.sampler import SamplerSettings  # noqa: E402
from shortcut_core.validation import ArgumentParser, add_debug_flag, positive_int, run_command  # noqa: E402

# prompt tokens of a Lumina-DiMOO row: "<system>Generate an image according to the text prompt.</system><user>"
# + the user prompt + "</user>" -- about 15 template tokens plus a typical 20-80 token prompt
DIMOO_PROMPT_TOKENS = 64
SHAPES = {
    # name: (steps, sequence length, width, image tokens, images recorded by the official recipe)
    "demo (16x16, D=128)": (16, 16 * 16 + 1, 128, 256, 320),
    "MaskGIT-512 (32x32, D=768)": (15, 32 * 32 + 1, 768, 1024, 50_000),
    "Lumina-DiMOO 1024^2 (64x64, D=4096)": (64, DIMOO_PROMPT_TOKENS + 2 + 64 * (64 + 1) + 2, 4096, 4096, 2_000),
}


def demo_shaped_generator(path: Path) -> str:
    if DEMO_GENERATOR.exists():
        return "demo"
    sys.path.insert(0, str(ROOT / "tests"))
    from shortcut_core.backends.maskgit import MaskGITConfig, MaskGITGenerator, MaskTransformer
    from shortcut_core.backends.vqgan import VQConfig, VQModel
    torch.manual_seed(0)
    transformer = MaskTransformer(MaskGITConfig(grid=16, hidden_dim=128, codebook_size=512, depth=2, heads=4,
                                                mlp_dim=256, nclass=10))
    vq = VQModel(VQConfig(n_embed=512, embed_dim=8, z_channels=8, resolution=64, ch=16, ch_mult=[1, 2, 2],
                          num_res_blocks=1, attn_resolutions=[]), with_encoder=False)
    generator = MaskGITGenerator(transformer, vq, identity="demo-shaped-random",
                                 default_settings={"steps": 16, "cfg_scale": 2.0, "r_temp": 3.0})
    save_generator(path, generator)
    return str(path)


def fit_run(data: Path, generator: str, work: Path, name: str, procs: int, threads: int, args) -> dict:
    out, log = work / f"{name}.safetensors", work / f"{name}.jsonl"
    script = [str(ROOT / "train" / "fit_shortcut.py"), "--data", str(data), "--generator", generator, "--out", str(out),
              "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", "3e-4",
              "--eval-every", str(10 * args.steps), "--val-limit", "64", "--device", "cpu", "--no-progress",
              "--log-file", str(log), "--log-every", str(args.window), "--data-in-memory", args.data_in_memory]
    if procs > 1:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                   "--master_port", str(29400 + os.getpid() % 500), *script]
    else:
        command = [sys.executable, *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.time()
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
    windows = [json.loads(line)["samples_per_s"] for line in log.read_text().splitlines()
               if json.loads(line)["kind"] == "train"]
    steady = windows[1:] or windows
    return {"processes": procs, "threads_per_process": threads, "samples_per_s": round(statistics.median(steady), 1),
            "windows": windows, "wall_seconds": round(time.time() - started, 1)}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=60)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--window", type=positive_int, default=10, help="steps per throughput window")
    parser.add_argument("--images", type=positive_int, default=16, help="images recorded for the throughput dataset")
    parser.add_argument("--data-in-memory", default="auto", choices=["auto", "yes", "no"])
    parser.add_argument("--json", default=None, help="also write the results to this .json file")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    add_debug_flag(parser)
    return parser


def measure(args) -> int:
    if args.json:
        check_output_file(args.json, args.force, (".json",), flag="--json")
    results = {"bytes_per_trajectory": {}, "fit": []}
    for name, (steps, sequence, width, tokens, images) in SHAPES.items():
        per = trajectory_bytes(steps, sequence, width, tokens, "fp16")
        results["bytes_per_trajectory"][name] = {
            "steps": steps, "sequence": sequence, "width": width, "features_bytes": steps * sequence * width * 2,
            "bytes": per, "official_dataset_bytes": per * images * 2, "official_images": images}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.set_num_threads(2)
        generator_name = demo_shaped_generator(work / "demo_shaped.safetensors")
        generator = load_generator(generator_name, device="cpu")
        settings = SamplerSettings.for_generator(generator)
        settings.steps, settings.seed = 16, 1000
        data = work / "traj"
        started = time.time()
        index = record(generator, data, ConditionSchedule(generator, args.images, 16), settings)
        results["recorded"] = {"generator": generator_name, "trajectories": index["trajectories"],
                               "bytes": index["bytes"], "seconds": round(time.time() - started, 1),
                               "measured_bytes_per_trajectory": round(index["bytes"] / index["trajectories"])}
        for name, procs, threads in (("1proc-1thread", 1, 1), ("1proc-2threads", 1, 2), ("2procs-1thread", 2, 1)):
            results["fit"].append({"name": name, **fit_run(data, generator_name, work, name, procs, threads, args)})
    print("recorder bytes per trajectory (one image, one CFG branch; fp16/bf16 features):")
    for name, row in results["bytes_per_trajectory"].items():
        print(f"  {name:38s} {row['steps']} x {row['sequence']} x {row['width']} x 2 = {row['features_bytes']:>14,d}"
              f" B features, {row['bytes']:>14,d} B in a shard; official recipe ({row['official_images']:,} images x 2"
              f" branches): {row['official_dataset_bytes'] / 1e12:.3f} TB")
    rec = results["recorded"]
    print(f"  measured on {rec['trajectories']} recorded demo-shaped trajectories: "
          f"{rec['measured_bytes_per_trajectory']:,} B each (header allowance {HEADER_BYTES_PER_TRAJECTORY} B); "
          f"recording took {rec['seconds']} s")
    print(f"fit throughput, global batch {args.batch_size}, CPU ({os.cpu_count()} cores visible):")
    for row in results["fit"]:
        print(f"  {row['name']:16s} {row['samples_per_s']:8.1f} samples/s   windows {row['windows']}")
    if args.json:
        write_text(Path(args.json), json.dumps(results, indent=1))
    return 0


def main(argv=None) -> int:
    return run_command(lambda: measure(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
