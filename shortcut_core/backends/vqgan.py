"""Taming-transformers style VQGAN (the image tokenizer of MaskGIT), with the original parameter names so a
Lightning ``last.ckpt`` state dict loads directly."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import DictConfig


@dataclass
class VQConfig(DictConfig):
    """``ddconfig`` of taming's VQModel plus the codebook; defaults are the ImageNet f16 1024-code model."""

    n_embed: int = 1024
    embed_dim: int = 256
    z_channels: int = 256
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: list = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: list = field(default_factory=lambda: [16])
    dropout: float = 0.0
    double_z: bool = False

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_taming(cls, params: dict) -> "VQConfig":
        """From taming's ``model.params`` (``ddconfig``, ``n_embed``, ``embed_dim``)."""
        dd = dict(params.get("ddconfig", {}))
        keep = {k: dd[k] for k in ("z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                                   "num_res_blocks", "attn_resolutions", "dropout", "double_z") if k in dd}
        keep["ch_mult"] = list(keep.get("ch_mult", [1, 1, 2, 2, 4]))
        keep["attn_resolutions"] = list(keep.get("attn_resolutions", [16]))
        return cls(n_embed=int(params["n_embed"]), embed_dim=int(params["embed_dim"]), **keep)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (m(h).reshape(b, c, hh * ww).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _mid(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_stage(stage: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The resnet blocks of one resolution, each followed by its attention block where the stage has them."""
    for i, block in enumerate(stage.block):
        h = block(h)
        if len(stage.attn):
            h = stage.attn[i](h)
    return h


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + tuple(cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            block_in, block_out = cfg.ch * in_mult[level], cfg.ch * mult
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = _mid(block_in, cfg.dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = _run_stage(stage, h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, cfg.dropout)
        stages = []
        for level in reversed(range(levels)):
            block_out = cfg.ch * cfg.ch_mult[level]
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            h = _run_stage(stage, h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQModel(nn.Module):
    """Encoder, codebook (``quantize.embedding``), and decoder; ``decode_codes`` is what sampling needs."""

    def __init__(self, cfg: VQConfig, with_encoder: bool = True):
        super().__init__()
        self.config = cfg
        if with_encoder:
            self.encoder = Encoder(cfg)
            self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(cfg.n_embed, cfg.embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] [B, 3, H, W] to the pre-quantisation latent [B, embed_dim, h, w]."""
        return self.quant_conv(self.encoder(images))

    def quantize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry per position: codes [B, h, w]."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codebook = self.quantize.embedding.weight
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None])
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantize_latent(self.encode_latent(images))

    def decode_latent(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] to images in the decoder's raw range (about [-1, 1])."""
        zq = self.quantize.embedding(codes).permute(0, 3, 1, 2)
        return self.decode_latent(zq.to(self.post_quant_conv.weight.dtype))
