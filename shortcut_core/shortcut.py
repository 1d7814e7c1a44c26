"""The shortcut network: predicts the base model's next last-layer feature from the current one and the
tokens just decoded (MIGM-Shortcut, MaskGIT variant).

Parameter names follow the official ``MaskGITShortcut`` state dict so the released weights load as they
are. Its quirks are kept on purpose: the attention pre-norm applies to the query only (keys and values are
the un-normalised tensors), and ``last_layer`` LayerNorms use eps 1e-12.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configs import DictConfig
from .generator import NewTokens, ShortcutError


@dataclass
class ShortcutConfig(DictConfig):
    """Architecture of a shortcut network; stored in the weights file's metadata."""

    feature_dim: int
    bottleneck_ratio: float = 2
    n_blocks: int = 1
    num_heads: int = 16
    embed_time: bool = True
    cross_attention: bool = True
    dropout: float = 0.0
    arch: str = "maskgit"
    extra: Optional[dict] = None

    @property
    def hidden_dim(self) -> int:
        return round(self.feature_dim / self.bottleneck_ratio)

    def validate(self) -> None:
        if self.feature_dim < 1:
            raise ShortcutError(f"feature_dim must be >= 1, got {self.feature_dim}")
        if self.bottleneck_ratio <= 0:
            raise ShortcutError(f"bottleneck_ratio must be > 0, got {self.bottleneck_ratio}")
        if self.n_blocks < 1:
            raise ShortcutError(f"n_blocks must be >= 1, got {self.n_blocks}")
        if self.hidden_dim % self.num_heads:
            raise ShortcutError(f"num_heads ({self.num_heads}) must divide the shortcut width "
                                f"{self.hidden_dim} (feature_dim {self.feature_dim} / ratio {self.bottleneck_ratio})")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT sinusoidal embedding ``cat(cos, sin)`` of a possibly fractional scalar per row."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_dim: int, frequency_dim: int = 256):
        super().__init__()
        mid = round(math.sqrt(hidden_dim * frequency_dim))
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, mid), nn.SiLU(), nn.Linear(mid, hidden_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor],
                     dropout_p: float = 0.0) -> torch.Tensor:
    """SDPA over [R, H, n, d] with ``key_valid`` [R, n] (None = all valid). A row without any valid key (no token
    was decoded at the previous step) gives zeros, on every torch version: it attends to all keys, then is zeroed,
    instead of relying on how a torch release treats a fully masked row (NaN before 2.5)."""
    if key_valid is None or bool(key_valid.all()):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    has_key = key_valid.any(dim=1)
    allowed = key_valid | ~has_key[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :], dropout_p=dropout_p)
    if not bool(has_key.all()):
        out = torch.where(has_key[:, None, None, None], out, torch.zeros_like(out))
    return out


class MultiheadProjections(nn.Module):
    """The weights of ``nn.MultiheadAttention`` (same names), applied through SDPA with separate key/value."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows, q_len, dim = query.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3, dim=0)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3, dim=0)
        q = F.linear(query, w_q, b_q).view(rows, q_len, heads, head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(rows, key.shape[1], heads, head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(rows, value.shape[1], heads, head_dim).transpose(1, 2)
        out = masked_attention(q, k, v, key_valid, self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(rows, q_len, dim)
        return self.out_proj(out)


class PreNormAttention(nn.Module):
    """``norm`` on the query only, as the official block does."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = nn.Module()
        self.fn.mha = MultiheadProjections(dim, num_heads, dropout)

    def forward(self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fn.mha(self.norm(x), key, value, key_valid)


class PreNormFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = nn.Module()
        self.fn.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.net(self.norm(x))


class ShortcutBlock(nn.Module):
    """Cross-attention to the new tokens + FFN, then self-attention + FFN (cross part optional for ablation)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, cross_attention: bool = True):
        super().__init__()
        if cross_attention:
            self.cross_attn = PreNormAttention(dim, num_heads, dropout)
            self.cross_attn_ff = PreNormFeedForward(dim, 4 * dim, dropout)
        self.self_attn = PreNormAttention(dim, num_heads, dropout)
        self.self_attn_ff = PreNormFeedForward(dim, 4 * dim, dropout)
        self.cross_attention = cross_attention

    def forward(self, x: torch.Tensor, new: torch.Tensor, new_valid: Optional[torch.Tensor],
                x_valid: Optional[torch.Tensor]) -> torch.Tensor:
        if self.cross_attention:
            attended = self.cross_attn(x, new, new, new_valid)
            if new_valid is not None:
                attended = attended * new_valid.any(dim=1).to(attended.dtype)[:, None, None]
            x = x + attended
            x = x + self.cross_attn_ff(x)
        x = x + self.self_attn(x, x, x, x_valid)
        return x + self.self_attn_ff(x)


class ShortcutNetwork(nn.Module):
    """f_{t+1} = f_t + S(f_t, newly decoded tokens, mask ratio)  (MaskGIT-Shortcut architecture).

    Inputs: ``prev_feature`` [R, T, D]; ``new`` the new tokens already embedded by the generator (token
    embedding plus position embedding, width D); ``mask_ratio`` [R] in 0..1, the masked fraction of the
    state the step starts from; ``padding`` [R, T] (True = padded feature position) or None.
    """

    def __init__(self, config: ShortcutConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim, hidden = config.feature_dim, config.hidden_dim
        if config.bottleneck_ratio != 1:
            self.proj_in = nn.Linear(dim, hidden)
            self.proj_out = nn.Linear(hidden, dim)
            self.new_token_proj_in = nn.Linear(dim, hidden)
        else:
            self.proj_in = self.proj_out = self.new_token_proj_in = nn.Identity()
        self.blocks = nn.ModuleList(ShortcutBlock(hidden, config.num_heads, config.dropout, config.cross_attention)
                                    for _ in range(config.n_blocks))
        self.last_layer = nn.Sequential(nn.LayerNorm(hidden, eps=1e-12), nn.Linear(hidden, hidden), nn.GELU(),
                                        nn.LayerNorm(hidden, eps=1e-12))
        if config.embed_time:
            self.time_embedder = TimestepEmbedder(hidden)
            self.adaLN_modulation = nn.Linear(hidden, 2 * hidden)

    def embed_query(self, prev_feature: torch.Tensor, new: NewTokens) -> torch.Tensor:
        """The stream the blocks refine; a subclass adds what its base features lack (e.g. grid positions)."""
        return self.proj_in(prev_feature)

    def forward(self, prev_feature: torch.Tensor, new: NewTokens, mask_ratio: torch.Tensor,
                padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embed_query(prev_feature, new)
        new_emb = self.new_token_proj_in(new.embeddings.to(x.dtype))
        x_valid = None if padding is None else ~padding
        for block in self.blocks:
            x = block(x, new_emb, new.valid, x_valid)
        x = self.last_layer(x)
        if self.config.embed_time:
            scale, shift = self.adaLN_modulation(self.time_embedder(mask_ratio * 1000)).unsqueeze(1).chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return self.proj_out(x) + prev_feature

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def config_from_state_dict(cls, state: dict, num_heads: Optional[int] = None) -> ShortcutConfig:
        """Architecture of an official MaskGIT-Shortcut state dict (the released weights use 16 heads)."""
        try:
            return config_from_state_dict(state, num_heads=num_heads or 16)
        except KeyError as err:
            raise ShortcutError(f"not MaskGIT-Shortcut weights (missing {err})") from err


# Architecture name -> class, or "module:Class" imported on first use (keeps heavy backends lazy). Module names
# starting with "." are relative to this package: inside ComfyUI it is imported as <pack folder>.shortcut_core.
# A class must take a ShortcutConfig; for weights without metadata it also needs a classmethod
# ``config_from_state_dict(state, num_heads)``.
SHORTCUT_ARCHS: dict[str, object] = {
    "maskgit": ShortcutNetwork,
    "dimoo": ".backends.dimoo:DimooShortcut",
    "amused": ".backends.amused:AmusedShortcut",
    "meissonic": ".backends.meissonic:MeissonicShortcut",
}


def shortcut_class(arch: str):
    if arch not in SHORTCUT_ARCHS:
        raise ShortcutError(f"unknown shortcut architecture {arch!r}; known: {', '.join(sorted(SHORTCUT_ARCHS))}")
    target = SHORTCUT_ARCHS[arch]
    if isinstance(target, str):
        import importlib
        module, _, name = target.partition(":")
        target = getattr(importlib.import_module(module, package=__package__), name)
        SHORTCUT_ARCHS[arch] = target
    return target


def build_shortcut(config: ShortcutConfig) -> nn.Module:
    """The network for ``config.arch``."""
    return shortcut_class(config.arch)(config)


def config_from_state_dict(state: dict, num_heads: int = 16, arch: str = "maskgit") -> ShortcutConfig:
    """Read the architecture of an official MaskGIT-Shortcut state dict from its shapes.

    Head count cannot be read from shapes (the released MaskGIT weights use 16); give it explicitly.
    """
    if "proj_in.weight" in state:
        hidden, dim = state["proj_in.weight"].shape
        ratio = dim / hidden
    else:
        dim = hidden = state["last_layer.1.weight"].shape[0]
        ratio = 1
    block_ids = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    if not block_ids:
        raise ShortcutError("this state dict has no 'blocks.*' keys: it is not a MaskGIT-Shortcut network")
    cross = any(".cross_attn." in k for k in state)
    return ShortcutConfig(feature_dim=int(dim), bottleneck_ratio=ratio, n_blocks=max(block_ids) + 1,
                          num_heads=num_heads, embed_time="adaLN_modulation.weight" in state,
                          cross_attention=cross, arch=arch)
