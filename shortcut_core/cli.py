"""Command line: ``python -m shortcut_core sample ...`` (and the subcommands other modules add)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .generator import Condition, ShortcutError, parse_class_labels
from .registry import load_generator, shortcut_path
from .sampler import SamplerSettings, StepInfo, sample
from .predictors import METHOD_HELP, METHODS
from .schedules import FULL_STEP_RULES, SEARCHED, TOKEN_SCHEDULES
from .weights import load_shortcut


def save_images(images: torch.Tensor, out: Path, grid: bool = True) -> list[str]:
    """[B, 3, H, W] in 0..1 to PNG: one file, a grid when there are several images (or one file each)."""
    from PIL import Image
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if grid or len(arrays) == 1:
        count = len(arrays)
        cols = min(count, max(1, int(np.ceil(np.sqrt(count)))))
        rows = int(np.ceil(count / cols))
        height, width = arrays.shape[1:3]
        sheet = np.full((rows * height + (rows - 1) * 2, cols * width + (cols - 1) * 2, 3), 255, np.uint8)
        for i, arr in enumerate(arrays):
            r, c = divmod(i, cols)
            sheet[r * (height + 2): r * (height + 2) + height, c * (width + 2): c * (width + 2) + width] = arr
        Image.fromarray(sheet).save(out)
        return [str(out)]
    paths = []
    for i, arr in enumerate(arrays):
        path = out.with_name(f"{out.stem}_{i:03d}{out.suffix}")
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


def parse_labels(text: Optional[str], generator, batch: int) -> list[int]:
    """'3', '1,4,7' or class names, cycled over the batch; default: classes 0, 1, 2, ..."""
    if not text:
        return [i % generator.num_classes for i in range(batch)]
    labels = parse_class_labels(generator, text)
    return [labels[i % len(labels)] for i in range(max(batch, len(labels)))]


def add_text_arguments(parser) -> None:
    """``--prompt`` (repeatable), ``--negative-prompt``, ``--width``, ``--height`` for text-to-image generators."""
    parser.add_argument("--prompt", action="append", default=None,
                        help="text prompt (repeat for several images; text-to-image generators)")
    parser.add_argument("--negative-prompt", default=None,
                        help="negative prompt for the unconditional branch (default: the generator's own)")
    add_size_arguments(parser)


def add_size_arguments(parser) -> None:
    parser.add_argument("--width", type=int, default=None,
                        help="image width in px (generators that draw at several sizes; default: their own)")
    parser.add_argument("--height", type=int, default=None, help="image height in px (see --width)")


def apply_image_size(generator, width: Optional[int], height: Optional[int]) -> None:
    """--width/--height: a size given for one side keeps the generator's current size for the other."""
    if width is None and height is None:
        return
    if generator.image_size is None:
        raise ShortcutError(f"generator {generator.identity!r} has a fixed size; drop --width/--height")
    current_w, current_h = generator.image_size
    generator.set_image_size(width or current_w, height or current_h)


def text_condition(generator, args, batch: Optional[int] = None) -> Condition:
    """Apply --width/--height to the generator and build the text ``Condition`` (prompts cycled to ``batch``)."""
    prompts = list(args.prompt or [])
    if not prompts:
        raise ShortcutError(f"generator {generator.identity!r} is text-to-image: give --prompt \"...\"")
    apply_image_size(generator, args.width, args.height)
    count = batch or len(prompts)
    prompts = [prompts[i % len(prompts)] for i in range(count)]
    negative = args.negative_prompt
    return Condition(prompts=prompts, negative_prompts=[negative] * count if negative else None)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images (vanilla, or faster with shortcut weights)")
    p.add_argument("--generator", default="demo", help="'demo' or a generator file/folder")
    p.add_argument("--shortcut", default=None,
                   help="shortcut weights file, 'demo' for the embedded one, 'none' for vanilla "
                        "(default: the generator's built-in weights when it has some)")
    p.add_argument("--preset", default=None,
                   help="named settings, e.g. maskgit512-N15-B7 (shortcut_core.presets); explicit flags override it")
    p.add_argument("--steps", type=int, default=None, help="sampling steps N")
    p.add_argument("--budget", type=int, default=None, help="steps that run the base model B (default: N)")
    p.add_argument("--full-steps", default=None, help="explicit 0-based full steps, e.g. 0,3,5")
    p.add_argument("--full-step-rule", choices=FULL_STEP_RULES + (SEARCHED,), default="official",
                   help="which steps run the base model; 'searched' needs weights with a step-error table "
                        "(train/search_schedule.py)")
    p.add_argument("--method", choices=METHODS, default="shortcut",
                   help="what runs on the other steps: " + "; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items()))
    p.add_argument("--schedule", choices=TOKEN_SCHEDULES, default=None)
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale w")
    p.add_argument("--no-cfg-ramp", action="store_true", help="constant guidance instead of the linear ramp")
    p.add_argument("--sm-temp", type=float, default=None, help="softmax temperature (multiplies the logits)")
    p.add_argument("--r-temp", type=float, default=None, help="Gumbel confidence noise, decays linearly to 0")
    p.add_argument("--classes", default=None, help="class labels or names, comma-separated")
    add_text_arguments(p)
    p.add_argument("--batch", type=int, default=None, help="images to generate (default: number of classes given, else 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--out", default="out.png", help="PNG path (a grid when several images)")
    p.add_argument("--separate", action="store_true", help="one PNG per image instead of a grid")
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    generator = load_generator(args.generator, device=args.device, dtype=args.dtype)
    settings = SamplerSettings.for_generator(generator)
    if args.preset:
        from .presets import apply_preset, check_preset
        settings = apply_preset(settings, args.preset)
        warning = check_preset(args.preset, generator)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    overrides = {"steps": args.steps, "budget": args.budget, "schedule": args.schedule, "cfg_scale": args.cfg,
                 "sm_temp": args.sm_temp, "r_temp": args.r_temp, "seed": args.seed, "autocast": args.autocast,
                 "full_step_rule": args.full_step_rule, "method": args.method}
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    if args.no_cfg_ramp:
        settings.cfg_ramp = False
    if args.full_steps:
        settings.full_steps = [int(s) for s in args.full_steps.split(",")]
        settings.budget = len(set(settings.full_steps))
    settings.validate()
    shortcut = None
    wants_shortcut = settings.method == "shortcut" and (
        settings.resolved_budget() < settings.steps or settings.full_step_rule == SEARCHED)
    shortcut_name = args.shortcut or (generator.default_settings.get("shortcut") if wants_shortcut else None)
    if shortcut_name and shortcut_name != "none":
        shortcut = load_shortcut(shortcut_path(shortcut_name), generator)
    settings.full_step_list(shortcut)  # a bad searched-schedule request fails before any work
    if generator.condition_kind == "text":
        batch = args.batch or len(args.prompt or []) or 1
        condition = text_condition(generator, args, batch)
        labels, names = [], []
    else:
        batch = args.batch or (len(args.classes.split(",")) if args.classes else 1)
        labels = parse_labels(args.classes, generator, batch)[:batch]
        condition = Condition(labels=labels)
        generator.check_condition(condition, batch)
        names = [generator.class_names[i] for i in labels]
    bar = tqdm(total=settings.steps, desc="sampling", unit="step", disable=args.json, file=sys.stderr)

    def progress(info: StepInfo) -> None:
        bar.set_postfix_str("full" if info.is_full else "shortcut")
        bar.update(1)

    result = sample(generator, condition, settings, shortcut=shortcut, callback=progress)
    bar.close()
    images = generator.decode(result.codes)
    paths = save_images(images, Path(args.out), grid=not args.separate)
    summary = {"generator": generator.identity, "method": settings.method, "steps": settings.steps,
               "budget": settings.resolved_budget(),
               "steps_run": result.steps_run, "full_steps": result.full_steps, "base_calls": result.base_calls,
               "shortcut_calls": result.shortcut_calls, "seconds": round(result.seconds, 4),
               "base_call_ms": round(result.base_call_ms, 3), "shortcut_call_ms": round(result.shortcut_call_ms, 3),
               "labels": labels, "class_names": names, "prompts": condition.prompts, "seed": settings.seed,
               "images": paths}
    if args.json:
        print(json.dumps(summary))
    else:
        predicted = (f", {result.shortcut_calls} {settings.method} calls at {result.shortcut_call_ms:.1f} ms"
                     if result.shortcut_calls else "")
        print(f"{generator.identity}: {batch} image(s), {settings.steps} steps, budget {settings.resolved_budget()}, "
              f"method {settings.method} (ran {result.steps_run} steps, full {result.full_steps}); "
              f"{result.base_calls} base calls at {result.base_call_ms:.1f} ms{predicted}; "
              f"{result.seconds:.2f} s; wrote {', '.join(paths)}")
    return 0


# Subcommands: (name, function adding its parser). Other modules append theirs here.
SUBCOMMANDS: list[tuple[str, Callable]] = [("sample", _add_sample)]

from .convert import add_convert_parser  # noqa: E402

from .bench import add_bench_parser  # noqa: E402

SUBCOMMANDS.append(("convert", add_convert_parser))
SUBCOMMANDS.append(("bench", add_bench_parser))


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m shortcut_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for _, add in SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ShortcutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
