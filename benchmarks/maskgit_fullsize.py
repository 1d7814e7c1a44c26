"""Per-call latency of the full-size MaskGIT-512 base model vs the MaskGIT-Shortcut network, on this machine.

Random weights in the real shapes (transformer 768 wide, 24 layers, 16 heads, MLP 3072, 32x32 tokens, 1000
classes, codebook 1024; shortcut R = 2, one block, 16 heads). One image with classifier-free guidance, i.e. 2
rows per call, as the sampler runs it. Each call is timed after warm-up; the median of the repeats is reported.

    python benchmarks/maskgit_fullsize.py [--repeats 5] [--warmup 2] [--new-tokens 64] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from shortcut_core.backends.maskgit import MaskGITConfig, MaskGITGenerator, MaskTransformer  # noqa: E402
from shortcut_core.backends.vqgan import VQConfig, VQModel  # noqa: E402
from shortcut_core.generator import Condition  # noqa: E402
from shortcut_core.schedules import full_steps  # noqa: E402
from shortcut_core.shortcut import ShortcutConfig, ShortcutNetwork  # noqa: E402
from shortcut_core.validation import (ArgumentParser, add_debug_flag, check_number, non_negative_int,  # noqa: E402
                                      positive_int, run_command)
from timing import timed  # noqa: E402


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--new-tokens", type=positive_int, default=64,
                        help="tokens decoded at the previous step (mean over the shortcut steps of (15, 7) is 64; "
                             "at most the 1024 tokens of the grid)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true")
    add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    return run_command(lambda: measure(build_parser().parse_args(argv)), argv)


def measure(args) -> int:
    check_number("--new-tokens", args.new_tokens, 1, 32 * 32, integer=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    transformer = MaskTransformer(MaskGITConfig(grid=32, hidden_dim=768, codebook_size=1024, depth=24, heads=16,
                                                mlp_dim=3072, nclass=1000))
    with torch.device("meta"):  # the VQGAN is not timed here; the generator only needs one to exist
        vq = VQModel(VQConfig(), with_encoder=False)
    generator = MaskGITGenerator(transformer, vq, identity="maskgit512-random").eval()
    shortcut = ShortcutNetwork(ShortcutConfig(feature_dim=768, bottleneck_ratio=2, n_blocks=1, num_heads=16)).eval()

    ctx = generator.prepare(Condition(labels=[1]), 1, guidance=True)
    length = generator.num_tokens
    codes = torch.randint(0, 1024, (1, length))
    masked = torch.rand(1, length) < 0.6
    new_map = torch.zeros(1, length, dtype=torch.bool)
    new_map[0, torch.randperm(length)[: args.new_tokens]] = True
    mask_ratio = masked.float().mean(dim=1).repeat(ctx.branches)

    with torch.inference_mode():
        feature = generator.features(codes, masked, ctx)
        new = generator.new_tokens(codes, new_map, ctx)
        base = timed(lambda: generator.features(codes, masked, ctx), args.warmup, args.repeats)
        short = timed(lambda: shortcut(feature, new, mask_ratio), args.warmup, args.repeats)
        head = timed(lambda: generator.head(feature, ctx, masked), args.warmup, args.repeats)

    base_ms, short_ms, head_ms = (1000 * statistics.median(t) for t in (base, short, head))
    steps, budget = 15, 7
    full = full_steps(steps, budget)
    vanilla_ms = steps * (base_ms + head_ms)
    fast_ms = budget * base_ms + (steps - budget) * short_ms + steps * head_ms
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "rows_per_call": ctx.rows,
        "sequence": length + 1, "new_tokens": args.new_tokens,
        "base_params_M": round(sum(p.numel() for p in transformer.parameters()) / 1e6, 2),
        "shortcut_params_M": round(shortcut.num_parameters() / 1e6, 3),
        "base_call_ms": round(base_ms, 1), "shortcut_call_ms": round(short_ms, 2), "head_ms": round(head_ms, 2),
        "base_over_shortcut": round(base_ms / short_ms, 1),
        "base_samples_ms": [round(1000 * t, 1) for t in base], "shortcut_samples_ms": [round(1000 * t, 2) for t in short],
        "network_time_15_steps_ms": round(vanilla_ms), "network_time_15_7_ms": round(fast_ms),
        "estimated_speedup_15_7": round(vanilla_ms / fast_ms, 2), "full_steps_15_7": full,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"CPU {result['machine']}, {result['threads']} threads, torch {result['torch']}; "
              f"batch 1 with CFG = {ctx.rows} rows x {length + 1} tokens; median of {args.repeats} after {args.warmup} warm-up")
        print(f"base MaskGIT-512 ({result['base_params_M']} M params): {base_ms:9.1f} ms / call")
        print(f"shortcut ({result['shortcut_params_M']} M params, {args.new_tokens} new tokens): "
              f"{short_ms:9.2f} ms / call")
        print(f"head (logits over the codebook): {head_ms:9.2f} ms / call")
        print(f"base / shortcut = {base_ms / short_ms:.1f}x (paper on GPU: ~24x)")
        print(f"network time for 15 steps: vanilla {vanilla_ms:.0f} ms, (15, 7) with full steps {full}: "
              f"{fast_ms:.0f} ms -> {vanilla_ms / fast_ms:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
