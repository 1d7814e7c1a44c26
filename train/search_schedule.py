"""Measure a shortcut's step-error table on held-out trajectories and store it in its weights file, so the
sampler can choose the full steps that minimise the measured error (``full_step_rule="searched"``).

    python train/record_trajectories.py --generator demo --count 64 --batch 16 --seed 900000 --out runs/demo_traj_heldout
    python train/search_schedule.py --generator demo --shortcut shortcut_core/assets/demo_shortcut.safetensors --data runs/demo_traj_heldout

The trajectories must not be the ones the shortcut was fitted on (record them with another --seed). The table is
written into ``--out`` (default: the shortcut file itself, rewritten atomically: weights and metadata unchanged).
Prints, per budget, the searched full steps next to the uniform (``official``) ones and their summed errors.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shortcut_core.generator import ShortcutError  # noqa: E402
from shortcut_core.outputs import check_output_file  # noqa: E402
from shortcut_core.recording import TrajectoryDataset  # noqa: E402
from shortcut_core.registry import load_generator, shortcut_path  # noqa: E402
from shortcut_core.schedule_search import measure_step_errors  # noqa: E402
from shortcut_core.schedules import full_steps, schedule_error, search_full_steps  # noqa: E402
from shortcut_core.validation import ArgumentParser, add_debug_flag, arg_device, positive_int, run_command  # noqa: E402
from shortcut_core.weights import load_shortcut, save_shortcut  # noqa: E402


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="demo")
    parser.add_argument("--shortcut", required=True, help="shortcut weights (.safetensors, or 'demo')")
    parser.add_argument("--data", required=True, help="held-out trajectories written by record_trajectories.py")
    parser.add_argument("--out", default=None, help="where to write the weights with the table (default: --shortcut)")
    parser.add_argument("--force", action="store_true", help="replace --out when it is another existing file")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--device", type=arg_device, default="auto")
    add_debug_flag(parser)
    return parser


def run(args) -> int:
    source = Path(shortcut_path(args.shortcut))
    if source.suffix != ".safetensors":
        raise ShortcutError(f"{source}: convert it to safetensors first (python -m shortcut_core convert), "
                            "the step-error table is stored in a safetensors file")
    if not source.is_file():
        raise ShortcutError(f"--shortcut {args.shortcut}: no such file")
    out = Path(args.out or source)
    if out.resolve() != source.resolve():  # rewriting --shortcut itself is what this script is for
        check_output_file(out, force=args.force, suffixes=(".safetensors",))
    if not Path(args.data).is_dir():
        raise ShortcutError(f"--data {args.data}: no such folder; record held-out trajectories into it first")
    generator = load_generator(args.generator, device=args.device)
    weights = load_shortcut(source, generator)
    dataset = TrajectoryDataset(Path(args.data))
    if dataset.index["generator"].get("generator") != generator.identity:
        raise ShortcutError(f"{args.data} holds trajectories of {dataset.index['generator'].get('generator')!r}, "
                            f"not of generator {generator.identity!r}")
    tables = measure_step_errors(generator, weights.network, dataset, batch_size=args.batch_size)
    weights.step_errors = {steps: table.float() for steps, table in tables.items()}
    weights.step_errors_info = {
        "metric": "MSE of the chained shortcut feature over still-masked positions, teacher-forced tokens",
        "data": str(args.data), "trajectories": len(dataset),
        "recorded_settings": dataset.index.get("settings", {})}
    if not weights.generator:
        weights.generator_info = {"generator": generator.identity}
    weights.network.float()
    save_shortcut(out, weights)
    for steps, table in sorted(tables.items()):
        for budget in range(2, steps):
            searched = search_full_steps(table, budget)
            uniform = full_steps(steps, budget)
            print(json.dumps({"steps": steps, "budget": budget, "searched": searched,
                              "searched_error": round(schedule_error(table, searched), 4), "official": uniform,
                              "official_error": round(schedule_error(table, uniform), 4)}))
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run_command(lambda: run(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
