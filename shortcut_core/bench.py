"""Speed and quality of shortcut sampling against the baselines, measured side by side in one run.

    python -m shortcut_core bench --generator demo --steps 16 --budgets 3,4,6,8 --images 500 --out runs/bench_demo

For every variant (vanilla N; the shortcut with the uniform and the searched full steps; the shortcut without
cross-attention, the paper's ablation; vanilla with B steps; feature reuse; TaylorSeer 1st / 2nd order) and
budget B it measures:

* latency: the sampler loop on ``--batch`` images (decode excluded, the same for all), ``--repeats`` runs after a
  warm-up, median; the variants take turns within each repeat so drift in machine load hits them alike;
* per-call cost: base model and predictor call medians, c = predictor / base, the bound N / (B + (N - B) c) and
  the efficiency = measured speedup over vanilla N / bound;
* quality on ``--images`` images (classes cycled, batch i seeded ``seed + i``, the same for every variant): for
  the demo, FID in the demo classifier's feature space against its reference statistics and the accuracy of the
  requested class (``metrics.demo_quality``); for every model, agreement with vanilla N at the same seed (equal
  tokens, PSNR of the decoded images);
* drift on the first batch: at each predicted step, the base model is also run on the same state (untimed) to get
  the cosine similarity of the features and the KL between the base and predicted logits.

Writes ``results.json``, ``table.md`` and ``pareto.png`` (latency vs FID, one line per variant, needs
matplotlib) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from .generator import Condition, MaskedGenerator, ShortcutError, take_positions
from .outputs import atomic_write, check_output_folder, write_text
from .registry import ASSETS, load_generator, shortcut_path
from .sampler import SamplerSettings, sample
from .schedules import SEARCHED
from .speed import expected_speedup
from .validation import (arg_device, arg_int_list, arg_seed, check_batch_memory, check_seed, non_negative_int,
                         positive_int)
from .weights import ShortcutWeights, load_shortcut

log = logging.getLogger(__name__)

DEMO_ABLATION = ASSETS / "demo_shortcut_no_cross.safetensors"


@dataclass
class Variant:
    name: str
    method: str
    full_step_rule: str = "official"
    shortcut: Optional[ShortcutWeights] = None
    label: str = ""


@dataclass
class Config:
    variant: Variant
    budget: int

    @property
    def key(self) -> str:
        return f"{self.variant.name}@B{self.budget}"


def build_variants(generator: MaskedGenerator, shortcut: str, ablation: Optional[str], names: list[str],
                   steps: int) -> list[Variant]:
    network = load_shortcut(shortcut_path(shortcut), generator)
    known = {
        "shortcut": lambda: Variant("shortcut", "shortcut", shortcut=network, label="shortcut (uniform full steps)"),
        "shortcut_searched": lambda: Variant("shortcut_searched", "shortcut", SEARCHED, network,
                                             "shortcut (searched full steps)"),
        "shortcut_no_cross": lambda: Variant("shortcut_no_cross", "shortcut", shortcut=load_shortcut(
            Path(ablation), generator), label="shortcut without cross-attention (ablation)"),
        "fewer_steps": lambda: Variant("fewer_steps", "fewer_steps", label="vanilla with B steps"),
        "reuse": lambda: Variant("reuse", "reuse", label="feature reuse"),
        "taylor1": lambda: Variant("taylor1", "taylor1", label="TaylorSeer 1st order"),
        "taylor2": lambda: Variant("taylor2", "taylor2", label="TaylorSeer 2nd order"),
    }
    variants = []
    for name in names:
        if name not in known:
            raise ShortcutError(f"unknown variant {name!r}; known: {', '.join(known)}")
        if name == "shortcut_no_cross" and not ablation:
            log.warning("no ablation weights (--ablation-shortcut): skipping shortcut_no_cross")
            continue
        if name == "shortcut_searched" and steps not in network.step_errors:
            log.warning("the shortcut weights carry no step-error table for %d steps (train/search_schedule.py): "
                        "skipping shortcut_searched", steps)
            continue
        variants.append(known[name]())
    return variants


def conditions(generator: MaskedGenerator, images: int, batch: int) -> list[Condition]:
    if generator.condition_kind != "class":
        raise ShortcutError("the benchmark sweeps class-conditional generators; give text prompts to the sampler "
                            "for text-to-image models")
    labels = [i % generator.num_classes for i in range(images)]
    return [Condition(labels=labels[i:i + batch]) for i in range(0, images, batch)]


class Drift:
    """Sampler callback: at each predicted step, compare with the base model run on the same state."""

    def __init__(self, generator: MaskedGenerator, condition: Condition, guidance: bool):
        from .metrics import feature_cosine, logits_kl
        self.generator, self.cosine, self.kl = generator, feature_cosine, logits_kl
        self.ctx = generator.prepare(condition, len(condition.labels), guidance)
        self.per_step: dict[int, dict] = {}

    def __call__(self, info) -> None:
        if info.is_full:
            return
        before = info.masked | info.new_map
        base = self.generator.features(info.codes, before, self.ctx)
        index = self.generator.image_positions(self.ctx)
        base_logits = self.generator.head(base, self.ctx, before).float()
        pred_logits = self.generator.head(info.feature, self.ctx, before).float()
        still = before.repeat(self.ctx.branches, 1)  # logits rows are branch-major, like the features
        self.per_step[info.index] = {
            "cosine": float(self.cosine(take_positions(info.feature, index).float(),
                                        take_positions(base, index).float())),
            "kl": float(self.kl(base_logits[still], pred_logits[still]))}


def run_config(generator, condition, settings, config: Config, callback=None):
    return sample(generator, condition, replace(settings, budget=config.budget, method=config.variant.method,
                                                full_step_rule=config.variant.full_step_rule),
                  shortcut=config.variant.shortcut, callback=callback)


def measure(args) -> dict:
    generator = load_generator(args.generator, device=args.device)
    base = SamplerSettings.for_generator(generator)
    base.steps, base.seed = args.steps, args.seed
    check_batch_memory(generator, max(args.batch, args.quality_batch), base.cfg_scale != 0,
                       what="--batch / --quality-batch")
    ablation = args.ablation_shortcut
    if ablation is None and args.generator == "demo" and DEMO_ABLATION.exists():
        ablation = str(DEMO_ABLATION)
    variants = build_variants(generator, args.shortcut, ablation, args.variants.split(","), args.steps)
    budgets = list(args.budgets)
    vanilla = Config(Variant("vanilla", "shortcut", label=f"vanilla N={args.steps}"), args.steps)
    configs = [vanilla] + [Config(v, b) for v in variants for b in budgets]
    guidance = base.cfg_scale != 0
    batches = conditions(generator, args.images, args.quality_batch)
    timing_condition = conditions(generator, args.batch, args.batch)[0]
    times = {c.key: [] for c in configs}
    calls = {c.key: {"base": [], "predicted": []} for c in configs}
    for repeat in range(args.warmup + args.repeats):
        for config in configs:
            result = run_config(generator, timing_condition, base, config)
            if repeat >= args.warmup:
                times[config.key].append(result.seconds)
                calls[config.key]["base"].append(result.base_call_ms)
                calls[config.key]["predicted"].append(result.shortcut_call_ms)
        log.info("timing repeat %d/%d done", repeat + 1, args.warmup + args.repeats)

    quality_available = generator.identity.startswith("demo-")
    if quality_available:
        from .metrics import demo_quality, load_demo_classifier
        classifier, _ = load_demo_classifier(generator.device)
    from .metrics import psnr, token_agreement
    reference_codes, reference_images = [], []
    rows = []
    vanilla_seconds = statistics.median(times[vanilla.key])
    for config in configs:
        codes, images, labels = [], [], []
        drift = Drift(generator, batches[0], guidance) if config is not vanilla else None
        started = time.perf_counter()
        for i, condition in enumerate(batches):
            settings = replace(base, seed=args.seed + i)
            result = run_config(generator, condition, settings, config, drift if i == 0 else None)
            codes.append(result.codes.cpu())
            images.append(generator.decode(result.codes).cpu())
            labels.extend(condition.labels)
            if config is vanilla:
                reference_codes.append(codes[-1])
                reference_images.append(images[-1])
        all_codes, all_images = torch.cat(codes), torch.cat(images)
        seconds = statistics.median(times[config.key])
        base_ms = statistics.median(calls[config.key]["base"])
        predicted_ms = statistics.median(calls[config.key]["predicted"])
        predicted_steps = result.shortcut_calls
        cost = predicted_ms / base_ms if base_ms and predicted_steps else 0.0
        bound = expected_speedup(args.steps, config.budget, cost, config.variant.method)
        speedup = vanilla_seconds / seconds
        row = {"variant": config.variant.name, "label": config.variant.label, "method": config.variant.method,
               "full_step_rule": config.variant.full_step_rule, "steps": args.steps, "budget": config.budget,
               "full_steps": result.full_steps, "base_calls": result.base_calls,
               "predicted_calls": result.shortcut_calls, "seconds": seconds,
               "seconds_per_image": seconds / len(timing_condition.labels), "speedup": speedup,
               "base_call_ms": base_ms, "predicted_call_ms": predicted_ms, "cost_ratio": cost, "bound": bound,
               "efficiency": speedup / bound, "images": len(all_codes),
               "quality_seconds": time.perf_counter() - started,
               "token_agreement_with_vanilla": token_agreement(all_codes, torch.cat(reference_codes)),
               "psnr_vs_vanilla_db": None if config is vanilla else psnr(all_images, torch.cat(reference_images))}
        if quality_available:
            row.update(demo_quality(all_images, torch.tensor(labels), classifier=classifier))
        if drift is not None and drift.per_step:
            row["drift"] = drift.per_step
            row["mean_cosine"] = statistics.mean(d["cosine"] for d in drift.per_step.values())
            row["mean_kl"] = statistics.mean(d["kl"] for d in drift.per_step.values())
        rows.append(row)
        log.info("%s: %.3f s (%.2fx), %s", config.key, seconds, speedup,
                 {k: round(v, 4) for k, v in row.items() if k in ("fid", "accuracy", "token_agreement_with_vanilla")})
    return {"generator": generator.identity, "device": str(generator.device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "steps": args.steps, "budgets": budgets, "batch": args.batch,
            "cfg_rows": args.batch * (2 if guidance else 1), "images": args.images,
            "quality_batch": args.quality_batch, "repeats": args.repeats,
            "warmup": args.warmup, "seed": args.seed, "settings": base.__dict__ | {"budget": None},
            "vanilla_seconds": vanilla_seconds, "rows": rows}


def markdown_table(report: dict) -> str:
    quality = any("fid" in r for r in report["rows"])
    head = ["variant", "B", "s / batch", "speedup", "c", "bound", "efficiency"]
    head += ["FID", "accuracy"] if quality else []
    head += ["tokens = vanilla", "PSNR vs vanilla", "cosine", "KL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [r["variant"], str(r["budget"]), f"{r['seconds']:.3f}", f"{r['speedup']:.2f}x",
                 f"1/{1 / r['cost_ratio']:.1f}" if r["cost_ratio"] else "-", f"{r['bound']:.2f}x",
                 f"{r['efficiency']:.2f}"]
        if quality:
            cells += [f"{r['fid']:.2f}", f"{100 * r['accuracy']:.1f} %"]
        psnr_db = r["psnr_vs_vanilla_db"]
        cells += [f"{100 * r['token_agreement_with_vanilla']:.1f} %", f"{psnr_db:.1f} dB" if psnr_db is not None else "-",
                  f"{r['mean_cosine']:.3f}" if "mean_cosine" in r else "-",
                  f"{r['mean_kl']:.3f}" if "mean_kl" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_plot(report: dict, path: Path, quality_key: str = "fid") -> bool:
    """Latency per image vs quality, one line per variant over the budgets; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib): no Pareto plot")
        return False
    rows = report["rows"]
    if not any(quality_key in r for r in rows):
        quality_key = "psnr_vs_vanilla_db"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in dict.fromkeys(r["variant"] for r in rows):
        points = sorted((1000 * r["seconds_per_image"], r[quality_key]) for r in rows
                        if r["variant"] == name and r.get(quality_key) is not None)
        if not points:
            continue
        label = next(r["label"] for r in rows if r["variant"] == name)
        if name == "vanilla":
            ax.scatter(*zip(*points), marker="*", s=160, color="black", zorder=5, label=label)
        else:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("latency per image (ms, sampler loop)")
    ax.set_ylabel({"fid": "FID (demo classifier features, lower is better)",
                   "psnr_vs_vanilla_db": "PSNR vs vanilla (dB, higher is better)"}[quality_key])
    ax.set_title(f"{report['generator']}: N = {report['steps']}, B in {report['budgets']} "
                 f"({report['device']}, {report['threads']} threads)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return True


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="speed and quality of the shortcut vs the baselines (JSON, table, Pareto plot)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="demo")
    p.add_argument("--shortcut", default="demo", help="shortcut weights ('demo' for the embedded ones)")
    p.add_argument("--ablation-shortcut", default=None,
                   help="weights fitted without cross-attention (default for the demo: the embedded ablation)")
    p.add_argument("--variants", default="shortcut,shortcut_searched,shortcut_no_cross,fewer_steps,reuse,taylor1,taylor2")
    p.add_argument("--steps", type=positive_int, default=16)
    p.add_argument("--budgets", type=arg_int_list(1), default=[3, 4, 6, 8], help="comma-separated budgets B")
    p.add_argument("--images", type=positive_int, default=500,
                   help="images per variant and budget for the quality figures")
    p.add_argument("--batch", type=positive_int, default=8, help="images per timed run")
    p.add_argument("--quality-batch", type=positive_int, default=50, help="images per run for the quality figures")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--warmup", type=non_negative_int, default=1)
    p.add_argument("--seed", type=arg_seed, default=0)
    p.add_argument("--device", type=arg_device, default="auto")
    p.add_argument("--out", default="runs/bench", help="folder for results.json, table.md, pareto.png")
    p.add_argument("--force", action="store_true", help="replace the results a previous run left in --out")
    p.set_defaults(func=run_bench)


OUTPUT_FILES = ("results.json", "table.md", "pareto.png")
VARIANTS = ("shortcut", "shortcut_searched", "shortcut_no_cross", "fewer_steps", "reuse", "taylor1", "taylor2")


def check_bench_args(args) -> Path:
    """Everything the sweep needs, checked before a model is loaded; returns the output folder."""
    bad = [b for b in args.budgets if not 1 <= b <= args.steps]
    if bad:
        raise ShortcutError(f"--budgets must lie in 1..steps ({args.steps}), got {bad[0]} in "
                            f"{','.join(map(str, args.budgets))}: lower it or raise --steps")
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise ShortcutError(f"--variants: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    check_seed("--seed", args.seed, offsets=(args.images + args.quality_batch - 1) // args.quality_batch)
    return check_output_folder(args.out, OUTPUT_FILES, force=args.force)


def run_bench(args) -> int:
    out = check_bench_args(args)
    report = measure(args)
    write_text(out / "results.json", json.dumps(report, indent=1))
    table = markdown_table(report)
    write_text(out / "table.md", table)
    plotted = pareto_plot(report, out / "pareto.png")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}" + (f", {out / 'pareto.png'}" if plotted else ""))
    return 0
