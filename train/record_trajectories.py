"""Record base-model trajectories (every step full) for fitting shortcut weights.

    python train/record_trajectories.py --generator demo --count 320 --batch 16 --steps 16 --out runs/demo_traj

Batch i is sampled with seed ``--seed + i``: class-conditional generators cycle over the classes (or --classes),
text-to-image generators over the prompts (--prompt, repeatable, or --prompts FILE: one per line, or JSONL with
"prompt" and optional "negative_prompt"). One safetensors shard per batch; memory holds one batch at a time.

Resumable: rerunning the same command continues after the last whole shard. The disk space it needs is printed
before starting and the run refuses when the disk cannot hold it (--no-disk-check to override).

Several processes fill one folder: batch i belongs to rank i % world size. Either launch with torchrun
(RANK / WORLD_SIZE / LOCAL_RANK from the environment; each rank uses cuda:LOCAL_RANK), or start processes by hand:

    python train/record_trajectories.py ... --rank 0 --world-size 2 &
    python train/record_trajectories.py ... --rank 1 --world-size 2 &
    torchrun --nproc_per_node=4 train/record_trajectories.py --generator PATH --count 50000 --batch 32 --out DIR
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from shortcut_core.generator import ShortcutError  # noqa: E402
from shortcut_core.cli import add_size_arguments, apply_image_size  # noqa: E402
from shortcut_core.files import human_bytes  # noqa: E402
from shortcut_core.outputs import check_writable_folder  # noqa: E402
from shortcut_core.recording import condition_schedule, record  # noqa: E402
from shortcut_core.registry import load_generator  # noqa: E402
from shortcut_core.sampler import SamplerSettings  # noqa: E402
from shortcut_core.validation import (ArgumentParser, add_debug_flag, arg_device, arg_number, arg_seed,  # noqa: E402
                                      check_batch_memory, check_seed, non_negative_int, positive_int, run_command)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ShortcutError(f"environment variable {name}={value!r} is not a whole number (set by torchrun)") from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="demo")
    parser.add_argument("--out", required=True, help="dataset folder (created, or resumed)")
    parser.add_argument("--count", type=positive_int, default=320,
                        help="images to sample (each gives one trajectory per CFG branch)")
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--steps", type=positive_int, default=None)
    parser.add_argument("--cfg", type=arg_number(float, 0), default=None)
    parser.add_argument("--seed", type=arg_seed, default=1000)
    parser.add_argument("--storage", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--device", type=arg_device, default="auto",
                        help="auto = cuda:LOCAL_RANK when CUDA is there, else cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="base model weights dtype (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--classes", default=None, help="comma-separated class labels or names to cycle (default: all)")
    parser.add_argument("--prompt", action="append", default=None, help="a text prompt (repeatable)")
    parser.add_argument("--prompts", default=None, help="prompt file: one per line, or .jsonl")
    parser.add_argument("--negative-prompt", default=None)
    add_size_arguments(parser)
    parser.add_argument("--rank", type=non_negative_int, default=None, help="this writer's rank (default: $RANK or 0)")
    parser.add_argument("--world-size", type=positive_int, default=None,
                        help="number of writers (default: $WORLD_SIZE or 1)")
    parser.add_argument("--no-disk-check", action="store_true", help="record even if the estimate exceeds free space")
    parser.add_argument("--verify", action="store_true", help="re-check this rank's existing shards (CRC32) first")
    add_debug_flag(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    rank = args.rank if args.rank is not None else env_int("RANK", 0)
    world = args.world_size if args.world_size is not None else env_int("WORLD_SIZE", 1)
    if not 0 <= rank < world:
        raise ShortcutError(f"--rank {rank} is not allowed with --world-size {world}: ranks are 0..{world - 1}")
    check_seed("--seed", args.seed, offsets=(args.count + args.batch - 1) // args.batch - 1)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ShortcutError(f"--out {out} is a file; give a dataset folder (created, or resumed)")
    check_writable_folder(out)
    device = args.device
    if device == "auto":
        device = f"cuda:{env_int('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    generator = load_generator(args.generator, device=device, dtype=args.dtype)
    apply_image_size(generator, args.width, args.height)
    settings = SamplerSettings.for_generator(generator)
    if args.steps is not None:
        settings.steps = args.steps
    if args.cfg is not None:
        settings.cfg_scale = args.cfg
    settings.seed = args.seed
    settings.budget = None
    settings.validate()
    check_batch_memory(generator, args.batch, settings.cfg_scale != 0)
    conditions = condition_schedule(generator, args.count, args.batch, args.classes, args.prompt, args.prompts,
                                    args.negative_prompt)
    index = record(generator, out, conditions, settings, storage=args.storage, rank=rank,
                   world_size=world, check_disk=not args.no_disk_check, verify=args.verify,
                   announce=lambda text: print(text, flush=True))
    print(f"{args.out}: {index['trajectories']} trajectories in {len(index['shards'])} shards, "
          f"{index['bytes'] / 1e6:.1f} MB ({human_bytes(index['bytes'])})")
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run_command(lambda: run(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
