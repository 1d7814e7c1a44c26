"""``python -m shortcut_core convert SRC DST.safetensors``: official checkpoints to safetensors, once, so later
loads never unpickle anything.

SRC is read safely (``torch.load(weights_only=True)``; a file that needs code to unpickle is refused) and its kind
is recognised from its keys:

- a MaskGIT transformer ``.pth`` (``MaskGIT_ImageNet_256.pth`` / ``_512.pth``) -> the model tensors only (no
  optimizer state), metadata: kind, source file name, shape config, head count (``--heads``, default 16);
- a taming VQGAN ``last.ckpt`` -> the VQModel tensors without ``loss.*`` (``--decoder-only`` also drops the
  encoder), metadata: kind, source, the config (from ``--vq-config``, else ``model.yaml`` beside it, else the
  standard ImageNet f16 one, checked against the tensor shapes);
- the official ``maskgit-shortcut.pth`` -> our shortcut weights format (config with ``--heads``, default 16; no
  generator identity, like the original);
- a ``pretrained_maskgit/`` folder, or a transformer file with ``--kind generator`` -> one self-contained
  generator file (transformer + VQ decoder, identity, class names, reference sampler settings) that
  ``--generator`` and the ComfyUI loader take directly.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from .generator import ShortcutError
from .outputs import check_output_file
from .validation import positive_int

KINDS = ("auto", "transformer", "vqgan", "shortcut", "generator")


def convert(src: Path, dst: Path, kind: str = "auto", heads: Optional[int] = None,
            codebook_size: Optional[int] = None, vq_config: Optional[Path] = None, decoder_only: bool = False,
            overwrite: bool = False) -> dict:
    """Convert ``src`` to safetensors at ``dst``; returns a summary (kind, source, destination, config)."""
    from .backends import maskgit_official as mo

    src, dst = Path(src), Path(dst)
    if kind not in KINDS:
        raise ShortcutError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not src.exists():
        raise ShortcutError(f"{src}: not found")
    if dst.exists() and src.is_file() and dst.resolve() == src.resolve():
        raise ShortcutError(f"{dst}: the destination is the source file")
    check_output_file(dst, force=overwrite, suffixes=(".safetensors",), flag="DST")
    if src.is_file() and src.suffix == ".safetensors" and kind == "auto":
        raise ShortcutError(f"{src}: already safetensors, nothing to convert")

    if src.is_dir() or kind == "generator":
        return _convert_generator(src, dst, heads, vq_config)
    detected = mo.sniff(src)
    wanted = {"transformer": mo.KIND_TRANSFORMER, "vqgan": mo.KIND_VQGAN, "shortcut": mo.KIND_SHORTCUT}.get(kind)
    if detected is None:
        raise ShortcutError(f"{src}: not a MaskGIT transformer, taming VQGAN or MaskGIT-Shortcut checkpoint "
                            "(its keys match none of them)")
    if wanted is not None and detected != wanted:
        raise ShortcutError(f"{src}: --kind {kind} was given, but the file is a {detected} checkpoint")

    if detected == mo.KIND_TRANSFORMER:
        state, info = mo.read_transformer_state(src)
        heads = int(heads or info.get("heads") or mo.DEFAULT_HEADS)
        codebook = codebook_size or info.get("codebook_size")
        # built on the meta device only: checks keys, shapes and the head count before anything is written.
        # Shapes do not depend on how the table splits into codes and classes; the VQGAN decides that at load.
        vocab = int(state["tok_emb.weight"].shape[0]) if "tok_emb.weight" in state else mo.DEFAULT_CODEBOOK + 3
        split = int(codebook or min(mo.DEFAULT_CODEBOOK, vocab - 3))
        mo.build_transformer(state, split, heads, src, check_only=True)
        metadata = mo.save_converted_transformer(dst, state, info, heads, codebook)
        return {"kind": detected, "source": str(src), "destination": str(dst), "config": metadata["config"],
                "tensors": len(state)}

    if detected == mo.KIND_VQGAN:
        state, extra = mo.read_vqgan_state(src)
        config, origin = mo.vq_config_for(src, state, extra, vq_config)
        model = mo.build_vqgan(state, config, src, not decoder_only and _has_encoder(state), origin)
        del state
        tensors = model.state_dict()
        mo.save_converted_vqgan(dst, tensors, config, src.name, extra)
        return {"kind": detected, "source": str(src), "destination": str(dst), "config": config.to_dict(),
                "config_from": origin, "tensors": len(tensors)}

    from .weights import save_shortcut

    weights = mo.load_official_shortcut(src, None, heads=heads)
    weights.generator_info = {"generator": ""}
    weights.training = {"converted_from": src.name, "origin": "official MaskGIT-Shortcut release format"}
    save_shortcut(dst, weights)
    return {"kind": detected, "source": str(src), "destination": str(dst), "config": weights.config.to_dict(),
            "tensors": len(weights.network.state_dict())}


def _has_encoder(state: dict) -> bool:
    return any(k.startswith("encoder.") for k in state)


def _convert_generator(src: Path, dst: Path, heads: Optional[int], vq_config: Optional[Path]) -> dict:
    from .backends import maskgit_official as mo
    from .registry import save_generator

    pieces = mo.resolve_pieces(src)
    if pieces is None:
        raise ShortcutError(f"{src}: not a pretrained_maskgit folder (MaskGIT/ + VQGAN/) nor a MaskGIT transformer "
                            "file with a VQGAN beside it")
    transformer, vqgan, _ = pieces
    generator = mo.load_maskgit(transformer, vqgan, heads=heads, vq_config=vq_config)
    generator.default_settings.pop("shortcut", None)  # local paths do not travel with the file
    save_generator(dst, generator)
    return {"kind": "generator", "source": str(src), "transformer": str(transformer), "vqgan": str(vqgan),
            "destination": str(dst), "identity": generator.identity,
            "config": generator.transformer.config.to_dict()}


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert official MaskGIT / VQGAN / MaskGIT-Shortcut checkpoints to safetensors",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a .pth/.ckpt checkpoint, or a pretrained_maskgit folder")
    p.add_argument("dst", help="the .safetensors file to write")
    p.add_argument("--kind", choices=KINDS, default="auto",
                   help="what SRC is (default: recognised from its keys; 'generator' = transformer + its VQGAN "
                        "in one file)")
    p.add_argument("--heads", type=positive_int, default=None,
                   help="attention heads of the transformer or shortcut (default 16, as the released weights)")
    p.add_argument("--codebook-size", type=positive_int, default=None,
                   help="VQGAN codebook size to record with a transformer (default: decided by the VQGAN at load)")
    p.add_argument("--vq-config", default=None, help="taming model.yaml of a VQGAN (default: model.yaml beside it)")
    p.add_argument("--decoder-only", action="store_true", help="drop the VQGAN encoder (not needed for sampling)")
    p.add_argument("--force", action="store_true", help="overwrite DST")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    summary = convert(Path(args.src), Path(args.dst), kind=args.kind, heads=args.heads,
                      codebook_size=args.codebook_size, vq_config=Path(args.vq_config) if args.vq_config else None,
                      decoder_only=args.decoder_only, overwrite=args.force)
    if args.json:
        print(json.dumps(summary))
    else:
        extra = f", identity {summary['identity']}" if "identity" in summary else ""
        print(f"converted {summary['kind']} {summary['source']} -> {summary['destination']}{extra}")
    return 0
