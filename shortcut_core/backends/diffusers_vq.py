"""The image tokenizer of the diffusers-based backends (Lumina-DiMOO, aMUSEd): a diffusers ``VQModel`` loaded in
float32 and decoded from code grids. Generators hold it as their ``vq`` child, which the registry keeps in float32
(``MaskedGenerator.float32_modules``) whatever dtype the transformer gets."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..files import weight_variant
from ..generator import ShortcutError


def load_vq(folder: Path, hint: str):
    """``VQModel`` from ``folder/vqvae`` (safetensors, fp16 variant accepted), float32, eval, no grad, on the CPU.
    ``hint`` says where the whole model folder comes from."""
    folder = Path(folder)
    if not (folder / "vqvae" / "config.json").is_file():
        raise ShortcutError(f"{folder}: no vqvae/ subfolder with config.json; the image tokenizer is there "
                            f"(download the whole {hint} repository)")
    from diffusers import VQModel
    low_memory = importlib.util.find_spec("accelerate") is not None  # diffusers warns when asked without it
    try:
        vq = VQModel.from_pretrained(str(folder), subfolder="vqvae", use_safetensors=True, torch_dtype=torch.float32,
                                     low_cpu_mem_usage=low_memory,
                                     variant=weight_variant(folder / "vqvae", "diffusion_pytorch_model"))
    except (OSError, ValueError) as err:
        raise ShortcutError(f"{folder}/vqvae: could not load the VQ model ({str(err).splitlines()[0]})") from err
    return vq.eval().requires_grad_(False)


@torch.no_grad()
def decode_vq(vq, codes: torch.Tensor, grid: tuple[int, int], codebook_size: int) -> torch.Tensor:
    """Image codes [B, h * w] to images [B, 3, H, W] in 0..1 (float32, autocast off), on the VQ's device."""
    height, width = grid
    device = next(vq.parameters()).device
    rows = codes.shape[0]
    shape = (rows, height, width, int(vq.config.latent_channels))
    idx = codes.to(device).long().clamp(0, codebook_size - 1)
    with torch.autocast(device_type=device.type, enabled=False):
        if vq.config.lookup_from_codebook:
            out = vq.decode(idx.view(rows, height, width), force_not_quantize=True, shape=shape).sample
        else:
            quant = vq.quantize.get_codebook_entry(idx.reshape(-1), shape)
            out = vq.decode(quant, force_not_quantize=True).sample
    return out.float().clamp(0, 1)
