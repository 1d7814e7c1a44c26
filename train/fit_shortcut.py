"""Fit shortcut weights from recorded trajectories and export them as safetensors with metadata.

    python train/fit_shortcut.py --data runs/demo_traj --generator demo --out shortcut_core/assets/demo_shortcut.safetensors

Loss: MSE on the next feature over still-masked positions (``--loss-positions all`` for every position);
AdamW, lr x0.1 after ``--lr-drop-step``, EMA weights exported. Validation figures (MSE and token agreement,
against the 'reuse the last feature' baseline) go to the log and into the file's metadata.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shortcut_core.fitting import FitSettings, fit_shortcut  # noqa: E402
from shortcut_core.generator import ShortcutError  # noqa: E402
from shortcut_core.recording import TrajectoryDataset  # noqa: E402
from shortcut_core.registry import load_generator  # noqa: E402
from shortcut_core.shortcut import ShortcutConfig  # noqa: E402
from shortcut_core.weights import save_shortcut  # noqa: E402


def main() -> int:
    defaults = FitSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder written by record_trajectories.py")
    parser.add_argument("--generator", default="demo", help="the generator the trajectories come from")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--bottleneck-ratio", type=float, default=2)
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: width / 32)")
    parser.add_argument("--no-cross-attention", action="store_true", help="the paper's ablation")
    for name in ("steps", "batch_size", "lr", "weight_decay", "lr_drop_step", "ema", "grad_clip", "val_fraction",
                 "seed", "eval_every"):
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--loss-positions", choices=["masked", "all"], default=defaults.loss_positions)
    parser.add_argument("--log", default=None, help="JSONL log of validation figures")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        generator = load_generator(args.generator, device=args.device, dtype="fp32")
        dataset = TrajectoryDataset(Path(args.data))
        width = round(generator.feature_dim / args.bottleneck_ratio)
        config = ShortcutConfig(feature_dim=generator.feature_dim, bottleneck_ratio=args.bottleneck_ratio,
                                n_blocks=args.blocks, num_heads=args.heads or max(1, width // 32),
                                cross_attention=not args.no_cross_attention, arch=generator.shortcut_arch)
        settings = FitSettings(**{name: getattr(args, name) for name in FitSettings.__dataclass_fields__})
        network, report = fit_shortcut(generator, dataset, config, settings,
                                       log_path=Path(args.log) if args.log else None)
        save_shortcut(Path(args.out), network, generator.describe(), training={**report, "data": str(args.data)})
    except ShortcutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, **{k: v for k, v in report.items() if k != "settings"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
