"""Fit shortcut weights from recorded trajectories (or online, from the base sampler) and export them as
safetensors with metadata (they load with ``load_shortcut`` as they are).

    python train/fit_shortcut.py --data runs/demo_traj --generator demo --out shortcut_core/assets/demo_shortcut.safetensors

Loss: MSE on the next feature over still-masked positions (``--loss-positions all`` for every position), optional
KL on the head's softmax (``--kl-weight``, ``--kl-temperature``) and teacher-forced rollout (``--rollout K``);
AdamW (lr 1e-4, weight decay 1e-2), lr x0.1 after ``--lr-drop-step``, gradient clipping, EMA weights exported.
Validation figures (MSE and token agreement, against the 'reuse the last feature' baseline) go to the log and
into the file's metadata, with ``per_call_ratio``: one shortcut call's time over one base-model call's, measured at
the end of the fit on this machine (a few timed calls each).

Several processes (data parallel, same result as one process over the same global --batch-size):

    torchrun --nproc_per_node=4 train/fit_shortcut.py --data DIR --generator PATH --out OUT.safetensors

Long runs: ``--checkpoint CKPT`` (atomic, every --checkpoint-every steps and when the run stops), ``--resume``
continues exactly; ``--max-steps`` / ``--max-minutes`` stop a run early (checkpointed, weights exported so far).
``--online`` trains on fresh trajectories from the base sampler instead of --data, storing nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shortcut_core.fitting import (FIT_LIMITS, FitSettings, OnlineSettings, RunOptions, fit_shortcut,  # noqa: E402
                                   fit_shortcut_online, init_distributed)
from shortcut_core.generator import ShortcutError  # noqa: E402
from shortcut_core.outputs import check_output_file, check_writable_folder  # noqa: E402
from shortcut_core.recording import TrajectoryDataset, condition_schedule  # noqa: E402
from shortcut_core.registry import load_generator  # noqa: E402
from shortcut_core.sampler import SamplerSettings  # noqa: E402
from shortcut_core.shortcut import ShortcutConfig  # noqa: E402
from shortcut_core.validation import (ArgumentParser, add_debug_flag, arg_device, arg_number, arg_seed,  # noqa: E402
                                      non_negative_int, positive_int, run_command)
from shortcut_core.weights import save_shortcut  # noqa: E402

HELP = {"amp": "autocast: auto = bf16 (or fp16) on CUDA, none on CPU",
        "rollout": "teacher-forced rollout length (1 = single-step, the official default)",
        "val_limit": "validation pairs evaluated each time",
        "kl_weight": "weight of the KL term on the head's softmax (official: 0 MaskGIT, 1 DiMOO)",
        "mse_weight": "weight of the MSE term (official DiMOO: 100)"}


def build_parser() -> ArgumentParser:
    defaults = FitSettings()
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder written by record_trajectories.py")
    parser.add_argument("--generator", default="demo", help="the generator the trajectories come from")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--force", action="store_true", help="replace --out (and --checkpoint) when they exist")
    parser.add_argument("--bottleneck-ratio", type=arg_number(float, 0, low_open=True), default=2)
    parser.add_argument("--blocks", type=positive_int, default=1)
    parser.add_argument("--heads", type=positive_int, default=None,
                        help="attention heads (default: width / 32, or the backend's official choice)")
    parser.add_argument("--no-cross-attention", action="store_true", help="the paper's ablation")
    for name, limits in FIT_LIMITS.items():
        value = getattr(defaults, name)
        kind = int if limits.get("integer") else float
        number = arg_number(kind, **{k: v for k, v in limits.items() if k != "integer"})
        parser.add_argument(f"--{name.replace('_', '-')}", type=number, default=value, help=HELP.get(name))
    parser.add_argument("--loss-positions", choices=["masked", "all"], default=defaults.loss_positions)
    parser.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], default=defaults.amp, help=HELP["amp"])
    parser.add_argument("--log", "--log-file", dest="log", default=None,
                        help="JSONL log (training loss and throughput, validation figures); under torchrun write --log-file (torchrun takes --log as its own option)")
    parser.add_argument("--device", type=arg_device, default="auto",
                        help="auto = cuda:LOCAL_RANK when CUDA is there, else cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                        help="base model dtype (head and token embedding are read from it)")
    add_debug_flag(parser)
    group = parser.add_argument_group("long runs")
    group.add_argument("--checkpoint", default=None, help="training checkpoint path (default with --resume, "
                                                           "--max-steps or --max-minutes: OUT.ckpt)")
    group.add_argument("--checkpoint-every", type=non_negative_int, default=500)
    group.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    group.add_argument("--max-steps", type=positive_int, default=None, help="stop this run at this global step")
    group.add_argument("--max-minutes", type=arg_number(float, 0), default=None,
                       help="stop this run after this many minutes")
    group.add_argument("--data-in-memory", choices=["auto", "yes", "no"], default="auto",
                       help="load the data into RAM (auto: when it fits) or read the memory-mapped shards")
    group.add_argument("--bad-shards", choices=["error", "skip"], default="error",
                       help="a damaged shard stops the run (error) or is left out with a warning (skip)")
    group.add_argument("--verify-shards", action="store_true", help="check every shard's CRC32 first")
    group.add_argument("--no-progress", action="store_true")
    group.add_argument("--log-every", type=non_negative_int, default=50,
                       help="training records in the JSONL log every N steps")
    group = parser.add_argument_group("online (no --data)")
    group.add_argument("--online", action="store_true", help="train on trajectories sampled while training")
    group.add_argument("--online-batch", type=positive_int, default=8, help="images per sampler run")
    group.add_argument("--online-buffer", type=positive_int, default=8, help="sampler runs kept in memory")
    group.add_argument("--online-refresh", type=positive_int, default=4, help="training steps per new sampler run")
    group.add_argument("--online-val-batches", type=positive_int, default=1, help="held-out sampler runs")
    group.add_argument("--sample-steps", type=positive_int, default=None,
                       help="sampler steps (default: the generator's)")
    group.add_argument("--cfg", type=arg_number(float, 0), default=None)
    group.add_argument("--sample-seed", type=arg_seed, default=1000)
    group.add_argument("--storage", default="fp16", choices=["fp16", "bf16", "fp32"])
    group.add_argument("--classes", default=None, help="comma-separated class labels or names to cycle (default: all)")
    group.add_argument("--prompt", action="append", default=None, help="a text prompt (repeatable)")
    group.add_argument("--prompts", default=None, help="prompt file: one per line, or .jsonl")
    group.add_argument("--negative-prompt", default=None)
    return parser


def shortcut_config(generator, args) -> ShortcutConfig:
    config = generator.default_shortcut_config(bottleneck_ratio=args.bottleneck_ratio, n_blocks=args.blocks,
                                               num_heads=args.heads)
    config.cross_attention = not args.no_cross_attention
    try:
        config.validate()
    except ShortcutError as err:
        raise ShortcutError(f"{err}: change --heads or --bottleneck-ratio") from None
    return config


def check_outputs(args) -> Optional[Path]:
    """--out, --checkpoint and --log checked before any work; returns the checkpoint path (or None)."""
    if (args.data is None) == (not args.online):
        raise ShortcutError("give --data DIR (recorded trajectories) or --online, not both")
    check_output_file(args.out, force=args.force or args.resume, suffixes=(".safetensors",),
                      force_flag="--force (or --resume)")
    checkpoint = args.checkpoint
    if checkpoint is None and (args.resume or args.max_steps or args.max_minutes):
        checkpoint = args.out + ".ckpt"
    if checkpoint is not None:
        check_output_file(checkpoint, force=args.force or args.resume, flag="--checkpoint",
                          force_flag="--resume (to continue it) or --force (to start over)")
    if args.log:
        if Path(args.log).is_dir():
            raise ShortcutError(f"--log-file {args.log} is a folder; give a file path (lines are appended)")
        check_writable_folder(Path(args.log).parent, "--log-file")
    if args.data is not None and not Path(args.data).is_dir():
        raise ShortcutError(f"--data {args.data}: no such folder; record trajectories into it first "
                            "(train/record_trajectories.py)")
    return Path(checkpoint) if checkpoint else None


def run(args, dist, device) -> int:
    checkpoint = check_outputs(args)
    run_options = RunOptions(checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume,
                             max_steps=args.max_steps, max_minutes=args.max_minutes,
                             data_in_memory=args.data_in_memory, progress=not args.no_progress,
                             log_every=args.log_every)
    settings = FitSettings(**{name: getattr(args, name) for name in FitSettings.__dataclass_fields__})
    settings.validate()
    dataset = None if args.online else TrajectoryDataset(Path(args.data), on_bad=args.bad_shards,
                                                         verify=args.verify_shards)
    generator = load_generator(args.generator, device=device, dtype=args.dtype)
    if args.online:
        sampler = SamplerSettings.for_generator(generator)
        if args.sample_steps is not None:
            sampler.steps = args.sample_steps
        if args.cfg is not None:
            sampler.cfg_scale = args.cfg
        sampler.seed, sampler.budget = args.sample_seed, None
        sampler.validate()
        conditions = condition_schedule(generator, None, args.online_batch, args.classes, args.prompt, args.prompts,
                                        args.negative_prompt)
        online = OnlineSettings(batch=args.online_batch, buffer=args.online_buffer,
                                refresh_every=args.online_refresh, val_batches=args.online_val_batches,
                                storage=args.storage)
        config = shortcut_config(generator, args)
        weights, report = fit_shortcut_online(generator, conditions, sampler, config, settings, online,
                                              log_path=Path(args.log) if args.log else None, run=run_options,
                                              dist=dist)
        source = "online"
    else:
        config = shortcut_config(generator, args)
        weights, report = fit_shortcut(generator, dataset, config, settings,
                                       log_path=Path(args.log) if args.log else None, run=run_options, dist=dist)
        source = str(args.data)
    if dist.main:
        weights.training = {**report, "data": source}
        save_shortcut(Path(args.out), weights)
        print(json.dumps({"out": args.out, **{k: v for k, v in report.items()
                                               if k not in ("settings", "online", "sampler_settings")}}))
    return 0


def main(argv=None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        dist, device = init_distributed(args.device)
        logging.basicConfig(level=logging.INFO if dist.main else logging.WARNING, format="%(asctime)s %(message)s")
        try:
            return run(args, dist, device)
        finally:
            if dist.enabled:
                import torch.distributed as torch_dist
                if torch_dist.is_initialized():
                    torch_dist.destroy_process_group()

    return run_command(body, argv)


if __name__ == "__main__":
    sys.exit(main())
