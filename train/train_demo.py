"""Train the embedded demo generator from scratch on procedural shapes (no download): a taming-style VQ
tokenizer (64x64 px -> 16x16 codes), then a class-conditional MaskGIT transformer on its codes.

    python train/train_demo.py --work runs/demo --out shortcut_core/assets/demo_generator.safetensors

Stages are cached in --work (data, VQ, codes, transformer checkpoints), so a killed run resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import CLASS_NAMES, render_dataset  # noqa: E402
from shortcut_core.backends.maskgit import MaskGITConfig, MaskGITGenerator, MaskTransformer  # noqa: E402
from shortcut_core.backends.vqgan import VQConfig, VQModel  # noqa: E402
from shortcut_core.registry import save_generator  # noqa: E402
from shortcut_core.files import atomic_write, load_tensors, save_safetensors  # noqa: E402
from shortcut_core.outputs import check_output_file, check_writable_folder, write_text  # noqa: E402
from shortcut_core.validation import (ArgumentParser, add_debug_flag, arg_device, arg_seed, positive_int,  # noqa: E402
                                      run_command)

log = logging.getLogger("train_demo")

VQ_CONFIG = VQConfig(n_embed=512, embed_dim=32, z_channels=64, resolution=64, ch=32, ch_mult=[1, 2, 4],
                     num_res_blocks=1, attn_resolutions=[], dropout=0.0)
MASKGIT_CONFIG = MaskGITConfig(grid=16, hidden_dim=128, codebook_size=512, depth=8, heads=4, mlp_dim=512,
                               nclass=len(CLASS_NAMES), dropout=0.0)
DEMO_SETTINGS = {"steps": 16, "schedule": "arccos", "cfg_scale": 2.0, "cfg_ramp": True, "sm_temp": 1.0,
                 "r_temp": 3.0, "shortcut": "demo"}


def amp_context(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def to_unit(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] to float [-1, 1] [B, 3, H, W]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def stage_data(work: Path, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    path = work / "data.npz"
    if path.exists():
        data = np.load(path)
        return data["images"], data["labels"]
    log.info("rendering %d shape images", count)
    images, labels = render_dataset(count, seed)
    atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), images=images, labels=labels))
    return images, labels


def stage_vq(work: Path, images: np.ndarray, steps: int, batch: int, device: torch.device, seed: int) -> VQModel:
    path = work / "vq.safetensors"
    vq = VQModel(VQ_CONFIG).to(device)
    if path.exists():
        vq.load_state_dict(load_tensors(path))
        return vq
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for n, p in vq.named_parameters() if not n.startswith("quantize.")]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    codebook = vq.quantize.embedding.weight
    ema_count = torch.ones(VQ_CONFIG.n_embed, device=device)
    ema_sum = codebook.detach().clone()
    initialised = False
    bar = tqdm(range(steps), desc="VQ", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3, 100)
        x = to_unit(images[rng.integers(0, len(images), batch)], device)
        with amp_context(device):
            z = vq.encode_latent(x).float()
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        with torch.no_grad():
            if not initialised:  # codebook from encoder outputs, not noise: no dead codes at the start
                codebook.copy_(flat[torch.randperm(len(flat), device=device)[: VQ_CONFIG.n_embed]])
                ema_sum.copy_(codebook)
                initialised = True
            codes = vq.quantize_latent(z).reshape(-1)
            onehot = F.one_hot(codes, VQ_CONFIG.n_embed).float()
            ema_count.mul_(0.99).add_(onehot.sum(0), alpha=0.01)
            ema_sum.mul_(0.99).add_(onehot.t() @ flat, alpha=0.01)
            codebook.copy_(ema_sum / ema_count.clamp(min=1e-5)[:, None])
            dead = ema_count < 0.03
            if dead.any():  # restart unused codes at random encoder outputs
                picks = flat[torch.randint(0, len(flat), (int(dead.sum()),), device=device)]
                codebook[dead] = picks
                ema_sum[dead] = picks
                ema_count[dead] = 1.0
        zq = codebook[codes].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        zq_st = z + (zq - z).detach()
        with amp_context(device):
            recon = vq.decode_latent(zq_st).float()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 0.25 * F.mse_loss(z, zq.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", used=int((ema_count > 0.5).sum()))
    save_safetensors(path, vq.state_dict(), {"stage": "vq", "config": VQ_CONFIG.to_dict()})
    return vq


@torch.no_grad()
def stage_codes(work: Path, vq: VQModel, images: np.ndarray, device: torch.device) -> np.ndarray:
    path = work / "codes.npy"
    if path.exists():
        return np.load(path)
    vq.eval()
    out = []
    for start in tqdm(range(0, len(images), 256), desc="tokenize"):
        with amp_context(device):
            z = vq.encode_latent(to_unit(images[start:start + 256], device)).float()
        out.append(vq.quantize_latent(z).cpu().numpy().astype(np.int16))
    codes = np.concatenate(out)
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), codes))
    return codes


def stage_transformer(work: Path, codes: np.ndarray, labels: np.ndarray, steps: int, batch: int,
                      device: torch.device, seed: int) -> MaskTransformer:
    """MaskGIT objective: mask an arccos-distributed fraction, cross-entropy on the masked positions,
    10 % of labels dropped to the null class for classifier-free guidance."""
    final = work / "transformer.safetensors"
    model = MaskTransformer(MASKGIT_CONFIG).to(device)
    torch.manual_seed(seed)
    nn.init.trunc_normal_(model.tok_emb.weight, std=0.02)  # N(0, 1) default makes the tied head's logits huge
    if final.exists():
        model.load_state_dict(load_tensors(final))
        return model
    ckpt = work / "transformer_ckpt.pt"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.96), weight_decay=0.03)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        log.info("resuming transformer training at step %d", start)
    gen = torch.Generator().manual_seed(seed + start)
    all_codes = torch.from_numpy(codes.astype(np.int64))
    all_labels = torch.from_numpy(labels)
    mask_id = MASKGIT_CONFIG.codebook_size
    model.train()
    bar = tqdm(range(start, steps), desc="transformer", unit="step", initial=start, total=steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3, 200)
        idx = torch.randint(0, len(all_codes), (batch,), generator=gen)
        tokens, y = all_codes[idx].to(device), all_labels[idx].to(device)
        tokens = tokens.flatten(1)
        ratio = torch.arccos(torch.rand(batch, generator=gen)) / (math.pi / 2)
        mask = torch.rand(tokens.shape, generator=gen) < ratio[:, None]
        mask[mask.sum(1) == 0, 0] = True
        mask = mask.to(device)
        drop = (torch.rand(batch, generator=gen) < 0.1).to(device)
        with amp_context(device):
            logits = model(torch.where(mask, torch.full_like(tokens, mask_id), tokens), y, drop)
        loss = F.cross_entropy(logits.float()[mask], tokens[mask], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 200 == 0 or step + 1 == steps:
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}
            atomic_write(ckpt, lambda tmp: torch.save(state, tmp))
    model.eval()
    save_safetensors(final, model.state_dict(), {"stage": "transformer", "config": MASKGIT_CONFIG.to_dict()})
    return model


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/demo", help="folder for cached stages and checkpoints")
    parser.add_argument("--out", default="shortcut_core/assets/demo_generator.safetensors")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--images", type=positive_int, default=12000)
    parser.add_argument("--vq-steps", type=positive_int, default=700)
    parser.add_argument("--vq-batch", type=positive_int, default=32)
    parser.add_argument("--steps", type=positive_int, default=2000, help="transformer training steps")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--seed", type=arg_seed, default=0)
    parser.add_argument("--device", type=arg_device, default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    return run_command(lambda: train(build_parser().parse_args(argv)), argv)


def train(args) -> int:
    check_output_file(args.out, args.force, (".safetensors",))
    check_writable_folder(Path(args.work), "--work")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    images, labels = stage_data(work, args.images, args.seed)
    vq = stage_vq(work, images, args.vq_steps, args.vq_batch, device, args.seed)
    codes = stage_codes(work, vq, images, device)
    transformer = stage_transformer(work, codes, labels, args.steps, args.batch, device, args.seed)
    decoder_only = VQModel(VQ_CONFIG, with_encoder=False)
    decoder_only.load_state_dict({k: v for k, v in vq.state_dict().items()
                                  if not k.startswith(("encoder.", "quant_conv."))})
    generator = MaskGITGenerator(transformer.cpu(), decoder_only, identity="demo-shapes64-v1",
                                 class_names=CLASS_NAMES, default_settings=DEMO_SETTINGS)
    generator.half()
    save_generator(Path(args.out), generator)
    summary = {"seconds": round(time.time() - started, 1), "images": args.images, "vq_steps": args.vq_steps,
               "transformer_steps": args.steps, "out": args.out}
    write_text(work / "summary.json", json.dumps(summary, indent=1))
    log.info("wrote %s (%s)", args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
