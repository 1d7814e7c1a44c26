"""Record base-model trajectories (every step full) for fitting shortcut weights.

    python train/record_trajectories.py --generator demo --count 320 --batch 16 --steps 16 --out runs/demo_traj

Batch i is sampled with seed ``--seed + i`` and classes cycling over the generator's classes; rerunning the
same command resumes after the last complete shard.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shortcut_core.generator import Condition, ShortcutError  # noqa: E402
from shortcut_core.recording import record  # noqa: E402
from shortcut_core.registry import load_generator  # noqa: E402
from shortcut_core.sampler import SamplerSettings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="demo")
    parser.add_argument("--out", required=True, help="dataset folder (created, or resumed)")
    parser.add_argument("--count", type=int, default=320, help="images to sample (each gives one trajectory per CFG branch)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--cfg", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--storage", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        generator = load_generator(args.generator, device=args.device)
        fields = SamplerSettings.__dataclass_fields__
        settings = SamplerSettings(**{k: v for k, v in generator.default_settings.items() if k in fields})
        if args.steps is not None:
            settings.steps = args.steps
        if args.cfg is not None:
            settings.cfg_scale = args.cfg
        settings.seed = args.seed
        settings.budget = None
        classes = max(generator.num_classes, 1)
        conditions = []
        for start in range(0, args.count, args.batch):
            size = min(args.batch, args.count - start)
            conditions.append(Condition(labels=[(start + i) % classes for i in range(size)]))
        index = record(generator, Path(args.out), conditions, settings, storage=args.storage)
    except ShortcutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {index['trajectories']} trajectories in {len(index['shards'])} shards, "
          f"{index['bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
