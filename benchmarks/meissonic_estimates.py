"""Meissonic at its real size, counted on the meta device (no weights, no GPU): parameters, weight bytes, FLOPs per call
(``torch.utils.flop_counter``) and the largest set of live activations during a call, for docs/meissonic.md.

Real configuration: the transformer of ``train/train_meissonic.py`` (14 dual + 28 single blocks, 8 heads x 128, RoPE
axes (16, 56, 56), text 1024, vocab 8256, codebook 8192, down/up-sampling), the CLIP-H text encoder of
laion/CLIP-ViT-H-14-laion2B-s32B-b79K (24 layers, 1024 wide, 77 tokens) and an aMUSEd-style VQ (diffusers'
scripts/convert_amused.py: 5 levels [128, 256, 256, 512, 768], 64 latent channels; Meissonic's own vqvae/config.json
could not be read here). One image with guidance = 2 rows per call, as the sampler runs it.

Live activations are tracked by a dispatch mode that adds each new (non-view) tensor's bytes and subtracts them when
the tensor is freed; weights are not counted. It is an estimate of what the allocator must hold, not a measurement.

    python benchmarks/meissonic_estimates.py [--size 1024] [--steps 64] [--budget 16] [--rate 100]
"""
from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from shortcut_core.backends.meissonic_transformer import MeissonicConfig, MeissonicTransformer  # noqa: E402
from shortcut_core.generator import NewTokens, ShortcutError  # noqa: E402
from shortcut_core.shortcut import ShortcutConfig, build_shortcut  # noqa: E402
from shortcut_core.validation import ArgumentParser, add_debug_flag, arg_number, positive_int, run_command  # noqa: E402

REAL = MeissonicConfig(num_layers=14, num_single_layers=28, num_attention_heads=8, attention_head_dim=128,
                       joint_attention_dim=1024, pooled_projection_dim=1024, axes_dims_rope=[16, 56, 56],
                       vocab_size=8256, codebook_size=8192, downsample=True, upsample=True)
CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
              max_position_embeddings=77, vocab_size=49408, projection_dim=1024, hidden_act="gelu")
AMUSED_VQ = dict(act_fn="silu", block_out_channels=[128, 256, 256, 512, 768], down_block_types=["DownEncoderBlock2D"] * 5,
                 up_block_types=["UpDecoderBlock2D"] * 5, in_channels=3, out_channels=3, latent_channels=64,
                 layers_per_block=2, norm_num_groups=32, num_vq_embeddings=8192, mid_block_add_attention=False,
                 lookup_from_codebook=True)
GB = 1e9


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensors alive at once among those created inside the mode (views share their base's bytes)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aliases = any(r.alias_info is not None for r in func._schema.returns)
        if not aliases:
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor):
                    size = tensor.numel() * tensor.element_size()
                    self.live += size
                    weakref.finalize(tensor, self._free, size)
            self.peak = max(self.peak, self.live)
        return out


def count(fn) -> tuple[float, float]:
    """(GFLOP, peak live activation GB) of one call of ``fn``."""
    with FlopCounterMode(display=False) as flops:
        fn()
    with LiveBytes() as live:
        fn()
    return flops.get_total_flops() / 1e9, live.peak / GB


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=positive_int, default=1024, help="image side in px, a multiple of 32")
    parser.add_argument("--steps", type=positive_int, default=64)
    parser.add_argument("--budget", type=positive_int, default=16, help="base calls of a shortcut run (<= --steps)")
    parser.add_argument("--rate", type=arg_number(float, 0, low_open=True), default=100.0,
                        help="assumed effective TFLOP/s in bf16")
    add_debug_flag(parser)
    return parser


def check_arguments(args) -> None:
    if args.size % 32:
        raise ShortcutError(f"--size {args.size} is not allowed: it must be a multiple of 32 (e.g. 512, 1024)")
    if args.budget > args.steps:
        raise ShortcutError(f"--budget {args.budget} is not allowed: it must be at most --steps ({args.steps})")


def main(argv=None) -> int:
    return run_command(lambda: estimate(build_parser().parse_args(argv)), argv)


def estimate(args) -> int:
    check_arguments(args)
    from diffusers import VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    rows, latent = 2, args.size // 16
    length = latent * latent
    dtype = torch.bfloat16
    with torch.device("meta"):
        transformer = MeissonicTransformer(REAL).to(dtype).eval()
        text = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_H)).to(dtype).eval()
        vq = VQModel(**AMUSED_VQ).eval()
        shortcut = build_shortcut(ShortcutConfig(feature_dim=REAL.inner_dim, bottleneck_ratio=2, n_blocks=1,
                                                 num_heads=16, arch="meissonic")).to(dtype).eval()
        ids = torch.zeros(rows, latent, latent, dtype=torch.long)
        states = torch.zeros(rows, 77, 1024, dtype=dtype)
        pooled = torch.zeros(rows, 1024, dtype=dtype)
        micro = torch.zeros(rows, 5, dtype=dtype)
        timestep = torch.zeros(1, dtype=torch.long)
        feature_map = torch.zeros(rows, REAL.inner_dim, latent, latent, dtype=dtype)
        feature = torch.zeros(rows, length, REAL.inner_dim, dtype=dtype)
        new_count = length // args.steps * 2  # a typical step late in the cosine schedule decodes ~2 L / N tokens
        new = NewTokens(torch.zeros(rows, new_count, REAL.inner_dim, dtype=dtype),
                        torch.zeros(rows, new_count, dtype=torch.long), None)  # all valid (no host check on meta)
        ratio = torch.full((rows,), 0.5)
        prompt_ids = torch.zeros(rows, 77, dtype=torch.long)
        codes = torch.zeros(1, latent, latent, dtype=torch.long)
        with torch.no_grad():
            base, base_live = count(lambda: transformer.feature(ids, states, pooled, micro, timestep))
            head, head_live = count(lambda: transformer.mlm_layer(feature_map))
            short, short_live = count(lambda: shortcut(feature, new, ratio))
            clip, _ = count(lambda: text(prompt_ids, output_hidden_states=True))
            decode, decode_live = count(lambda: vq.decode(codes, force_not_quantize=True,
                                                          shape=(1, latent, latent, 64)))
    logits_gb = rows * length * REAL.codebook_size * 4 / GB  # the sampler's float32 guided-logit tensors per step
    vanilla = args.steps * (base + head)
    fast = args.budget * (base + head) + (args.steps - args.budget) * (short + head)
    report = {
        "size_px": args.size, "latent_grid": latent, "transformer_tokens": (latent // 2) ** 2, "rows": rows,
        "params_m": {"transformer": params(transformer) / 1e6, "text_encoder": params(text) / 1e6,
                     "vq": params(vq) / 1e6, "vq_decoder": (params(vq.decoder) + params(vq.post_quant_conv)
                                                            + params(vq.quantize)) / 1e6,
                     "shortcut": params(shortcut) / 1e6},
        "weights_gb": {"transformer_bf16": params(transformer) * 2 / GB, "text_encoder_bf16": params(text) * 2 / GB,
                       "vq_fp32": params(vq) * 4 / GB, "transformer_fp32": params(transformer) * 4 / GB},
        "gflop": {"base_call": base, "head_all_positions": head, "shortcut_call": short, "text_encoder": clip,
                  "vq_decode_fp32": decode},
        "peak_live_activations_gb": {"base_call": base_live, "head_all_positions": head_live,
                                     "shortcut_call": short_live, "vq_decode_fp32": decode_live,
                                     "sampler_logits_fp32_one_tensor": logits_gb},
        "per_image_tflop": {"vanilla": vanilla / 1e3, "shortcut": fast / 1e3},
        "assumed_tflops": args.rate,
        "estimated_seconds": {"vanilla": vanilla / 1e3 / args.rate, "shortcut": fast / 1e3 / args.rate},
        "steps": args.steps, "budget": args.budget, "new_tokens_per_shortcut_call": new_count,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
