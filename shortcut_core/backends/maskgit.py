"""MaskGIT (valeoai/Maskgit-pytorch v1 architecture): class-conditional bidirectional transformer over a VQGAN
token grid. Parameter names follow the reference ``MaskTransformer`` so its checkpoints load as they are.

Sequence = L image tokens then ONE class token (id ``codebook + 1 + y``; the null class for CFG is
``codebook + 1 + nclass``); mask id = codebook size. Feature = output of ``last_layer`` [R, L+1, D];
head = ``feature @ tok_emb.weight.T + bias`` sliced to image positions and codes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import DictConfig
from ..generator import Condition, Context, MaskedGenerator, NewTokens, gather_new_tokens, per_row
from ..shortcut import PreNormAttention, PreNormFeedForward
from .vqgan import VQConfig, VQModel


@dataclass
class MaskGITConfig(DictConfig):
    grid: int = 16
    hidden_dim: int = 768
    codebook_size: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 3072
    nclass: int = 1000
    dropout: float = 0.0

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 1 + self.nclass + 1

    @classmethod
    def from_state_dict(cls, state: dict, codebook_size: int, heads: int = 16) -> "MaskGITConfig":
        """Sizes from tensor shapes. The embedding table holds codebook + mask + classes + null class, so the
        codebook size (from the VQGAN) splits it; heads cannot be read from shapes (16 in the released files)."""
        vocab, hidden = state["tok_emb.weight"].shape
        grid = round((state["pos_emb"].shape[1] - 1) ** 0.5)
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.layers."))
        mlp = state["transformer.layers.0.1.fn.net.0.weight"].shape[0]
        return cls(grid=grid, hidden_dim=int(hidden), codebook_size=codebook_size, depth=depth, heads=heads,
                   mlp_dim=int(mlp), nclass=int(vocab) - codebook_size - 2)


class TransformerLayer(nn.Module):
    """Pre-norm attention + FFN; indexed ``.0`` / ``.1`` like the reference ``nn.ModuleList`` pair."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.add_module("0", PreNormAttention(dim, heads, dropout))
        self.add_module("1", PreNormFeedForward(dim, mlp_dim, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn, ff = self._modules["0"], self._modules["1"]
        h = attn.norm(x)
        x = x + attn.fn.mha(h, h, h)
        return x + ff(x)


class MaskTransformer(nn.Module):
    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.hidden_dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, dim)
        self.pos_emb = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, cfg.grid * cfg.grid + 1, dim), 0.0, 0.02))
        self.first_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-12), nn.Dropout(cfg.dropout), nn.Linear(dim, dim),
                                         nn.GELU(), nn.LayerNorm(dim, eps=1e-12), nn.Dropout(cfg.dropout),
                                         nn.Linear(dim, dim))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(TransformerLayer(dim, cfg.heads, cfg.mlp_dim, cfg.dropout)
                                                for _ in range(cfg.depth))
        self.last_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-12), nn.Dropout(cfg.dropout), nn.Linear(dim, dim),
                                        nn.GELU(), nn.LayerNorm(dim, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(cfg.grid * cfg.grid + 1, cfg.vocab_size))

    def class_tokens(self, labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        null = torch.full_like(labels, cfg.codebook_size + 1 + cfg.nclass)
        return torch.where(drop, null, labels + cfg.codebook_size + 1)

    def features(self, tokens: torch.Tensor, class_tokens: torch.Tensor) -> torch.Tensor:
        """tokens [R, L] (mask id = codebook size), class_tokens [R] -> last feature [R, L+1, D]."""
        seq = torch.cat([tokens, class_tokens[:, None]], dim=1)
        x = self.first_layer(self.tok_emb(seq) + self.pos_emb)
        for layer in self.transformer.layers:
            x = layer(x)
        return self.last_layer(x)

    def logits(self, feature: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        grid_tokens = cfg.grid * cfg.grid
        weight = self.tok_emb.weight[: cfg.codebook_size]
        return F.linear(feature[:, :grid_tokens], weight, self.bias[:grid_tokens, : cfg.codebook_size])

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, drop_label: torch.Tensor) -> torch.Tensor:
        """Training entry: logits over the codebook plus the mask id, like the reference forward."""
        feature = self.features(tokens.flatten(1), self.class_tokens(labels, drop_label))
        grid_tokens = self.config.grid ** 2
        full = feature[:, :grid_tokens] @ self.tok_emb.weight.t() + self.bias[:grid_tokens]
        return full[..., : self.config.codebook_size + 1]


@dataclass
class MaskGITContext(Context):
    class_tokens: Optional[torch.Tensor] = per_row()  # [R] the class token id of each row (null class: uncond)


class MaskGITGenerator(MaskedGenerator):
    """MaskGIT transformer + taming VQGAN decoder as a ``MaskedGenerator``."""

    condition_kind = "class"
    shortcut_arch = "maskgit"

    def __init__(self, transformer: MaskTransformer, vq: VQModel, identity: str,
                 class_names: Optional[Sequence[str]] = None, default_settings: Optional[dict] = None):
        super().__init__()
        cfg = transformer.config
        self.transformer = transformer
        self.vq = vq
        self.identity = identity
        self.feature_dim = cfg.hidden_dim
        self.codebook_size = cfg.codebook_size
        self.grid_size = (cfg.grid, cfg.grid)
        self.num_classes = cfg.nclass
        self.class_names = list(class_names) if class_names else [str(i) for i in range(cfg.nclass)]
        self.default_settings = dict(default_settings or {})

    def prepare(self, condition: Condition, batch_size: int, guidance: bool) -> Context:
        self.check_condition(condition, batch_size)
        device = self.device
        labels = torch.as_tensor([int(v) for v in condition.labels], dtype=torch.long, device=device)
        branches = 2 if guidance else 1
        drop = torch.zeros(batch_size * branches, dtype=torch.bool, device=device)
        drop[batch_size:] = True
        class_tokens = self.transformer.class_tokens(labels.repeat(branches), drop)
        return MaskGITContext(batch_size=batch_size, branches=branches, device=device, class_tokens=class_tokens)

    def features(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        tokens = torch.where(masked, torch.full_like(codes, self.codebook_size), codes)
        return self.transformer.features(tokens.repeat(ctx.branches, 1), ctx.class_tokens)

    @property
    def preset_family(self) -> str:
        """maskgit512 / maskgit256 (the paper's presets) by token grid with the f16 VQGAN, else maskgit."""
        return {(32, 32): "maskgit512", (16, 16): "maskgit256"}.get(tuple(self.grid_size), "maskgit")

    def sequence_length(self, ctx: Context) -> int:
        return self.num_tokens + 1  # the image tokens, then the class token

    def head(self, feature: torch.Tensor, ctx: Context, masked: torch.Tensor) -> torch.Tensor:
        return self.transformer.logits(feature)

    def new_tokens(self, codes: torch.Tensor, new_map: torch.Tensor, ctx: Context) -> NewTokens:
        ids, positions, valid = gather_new_tokens(new_map, codes)
        emb = self.transformer.tok_emb(ids) + self.transformer.pos_emb[0, positions]
        reps = ctx.branches
        return NewTokens(emb.repeat(reps, 1, 1), positions.repeat(reps, 1), valid.repeat(reps, 1))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        grid = codes.view(codes.shape[0], *self.grid_size).clamp(0, self.codebook_size - 1)
        images = self.vq.decode_codes(grid).float()
        return ((images + 1) / 2).clamp(0, 1)

    def describe(self) -> dict:
        info = super().describe()
        info.update(backend="maskgit", maskgit_config=self.transformer.config.to_dict(),
                    vq_config=self.vq.config.to_dict())
        return info


def generator_tensors(generator: MaskGITGenerator) -> dict[str, torch.Tensor]:
    """What our generator file stores: the transformer and the VQ decoder side (no encoder)."""
    tensors = {f"transformer.{k}": v for k, v in generator.transformer.state_dict().items()}
    tensors.update({f"vq.{k}": v for k, v in generator.vq.state_dict().items()
                    if not k.startswith(("encoder.", "quant_conv."))})
    return tensors


def generator_metadata(generator: MaskGITGenerator) -> dict:
    return {"backend": "maskgit", "identity": generator.identity,
            "maskgit_config": generator.transformer.config.to_dict(), "vq_config": generator.vq.config.to_dict(),
            "class_names": list(generator.class_names), "default_settings": generator.default_settings}


def generator_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict) -> MaskGITGenerator:
    """Rebuild a generator saved by ``generator_tensors`` / ``generator_metadata``."""
    transformer = MaskTransformer(MaskGITConfig.from_dict(metadata["maskgit_config"]))
    transformer.load_state_dict({k[len("transformer."):]: v for k, v in tensors.items() if k.startswith("transformer.")})
    vq = VQModel(VQConfig(**metadata["vq_config"]), with_encoder=False)
    vq.load_state_dict({k[len("vq."):]: v for k, v in tensors.items() if k.startswith("vq.")})
    return MaskGITGenerator(transformer, vq, identity=metadata["identity"], class_names=metadata.get("class_names"),
                            default_settings=metadata.get("default_settings"))
