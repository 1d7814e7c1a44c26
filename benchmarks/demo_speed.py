"""Speed of shortcut sampling on the embedded demo, measured side by side in one run.

    python benchmarks/demo_speed.py [--batch 8] [--steps 16] [--budgets 4,6,8] [--repeats 5] [--json out.json]

Reports the per-call latency of the base model and of the shortcut (median over repeats, after warm-up),
their ratio c, end-to-end latency of vanilla N steps vs (N, B), the measured speedup, the bound
N / (B + (N - B) c), and agreement with vanilla at the same seed (equal tokens, PSNR of the decoded images),
next to the same figures for reusing the previous feature on shortcut steps (no network).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shortcut_core import Condition, SamplerSettings, load_generator, load_shortcut, sample, shortcut_path  # noqa: E402
from timing import median_seconds  # noqa: E402


class ReuseFeature(torch.nn.Module):
    """The training-free baseline at the same budget: a shortcut step reuses the previous feature."""

    def forward(self, prev_feature, new, mask_ratio, padding=None):
        return prev_feature


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="demo")
    parser.add_argument("--shortcut", default="demo")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--budgets", default="4,6,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    generator = load_generator(args.generator, device=args.device)
    shortcut = load_shortcut(shortcut_path(args.shortcut), generator)
    base_settings = SamplerSettings.for_generator(generator)
    base_settings.steps = args.steps
    condition = Condition(labels=[i % generator.num_classes for i in range(args.batch)])

    # Per-call latency on a real mid-trajectory state (step 4 of a vanilla run), both CFG branches.
    states = []
    sample(generator, condition, SamplerSettings(**{**base_settings.__dict__, "budget": None}),
           callback=lambda info: states.append(info))
    state = states[4]
    ctx = generator.prepare(condition, args.batch, base_settings.cfg_scale != 0)
    masked_before = state.masked | state.new_map
    ratio = masked_before.float().mean(1).repeat(ctx.branches)
    with torch.no_grad():
        new = generator.new_tokens(state.codes, state.new_map, ctx)
        base_s = median_seconds(lambda: generator.features(state.codes, state.masked, ctx), args.repeats)
        short_s = median_seconds(lambda: shortcut(state.feature, new, ratio, ctx.padding), args.repeats)
        head_s = median_seconds(lambda: generator.head(state.feature, ctx, state.masked), args.repeats)
    cost = short_s / base_s

    def run(budget, network=shortcut):
        settings = SamplerSettings(**{**base_settings.__dict__, "budget": budget, "seed": 0})
        return sample(generator, condition, settings, shortcut=network)

    def psnr(codes) -> float:
        error = (generator.decode(codes) - vanilla_images).pow(2).mean().clamp(min=1e-10)
        return float(-10 * torch.log10(error))

    vanilla_codes = run(None).codes
    vanilla_images = generator.decode(vanilla_codes)
    vanilla_s = median_seconds(lambda: run(None), args.repeats, warmup=1)
    rows = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        result = run(budget)
        reused = run(budget, ReuseFeature())
        seconds = median_seconds(lambda: run(budget), args.repeats, warmup=1)
        bound = args.steps / (budget + (args.steps - budget) * cost)
        speedup = vanilla_s / seconds
        rows.append({"budget": budget, "full_steps": result.full_steps, "seconds": seconds, "speedup": speedup,
                     "bound": bound, "efficiency": speedup / bound,
                     "token_agreement_with_vanilla": float((result.codes == vanilla_codes).float().mean()),
                     "psnr_vs_vanilla_db": psnr(result.codes),
                     "reuse_token_agreement_with_vanilla": float((reused.codes == vanilla_codes).float().mean()),
                     "reuse_psnr_vs_vanilla_db": psnr(reused.codes)})
    report = {"generator": generator.identity, "device": str(generator.device), "threads": torch.get_num_threads(),
              "batch": args.batch, "steps": args.steps, "base_call_ms": 1000 * base_s,
              "shortcut_call_ms": 1000 * short_s, "head_ms": 1000 * head_s, "cost_ratio": cost,
              "vanilla_seconds": vanilla_s, "runs": rows}
    print(f"{generator.identity} on {generator.device} ({torch.get_num_threads()} threads), batch {args.batch} "
          f"with CFG ({ctx.rows} rows), N = {args.steps}")
    print(f"per call: base {1000 * base_s:.2f} ms, shortcut {1000 * short_s:.2f} ms "
          f"(c = {cost:.3f} = 1/{1 / cost:.1f}), head {1000 * head_s:.2f} ms")
    print(f"vanilla N={args.steps}: {vanilla_s:.3f} s")
    print("| N | B | full steps | seconds | speedup | bound N/(B+(N-B)c) | efficiency | tokens = vanilla | PSNR vs vanilla "
          "| reuse-feature tokens = vanilla | reuse-feature PSNR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {args.steps} | {row['budget']} | {row['full_steps']} | {row['seconds']:.3f} | {row['speedup']:.2f}x | "
              f"{row['bound']:.2f}x | {row['efficiency']:.2f} | {100 * row['token_agreement_with_vanilla']:.1f} % | "
              f"{row['psnr_vs_vanilla_db']:.1f} dB | {100 * row['reuse_token_agreement_with_vanilla']:.1f} % | "
              f"{row['reuse_psnr_vs_vanilla_db']:.1f} dB |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
