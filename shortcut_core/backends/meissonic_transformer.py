"""Meissonic's transformer (GitHub viiika/Meissonic, ``src/transformer.py`` ``Transformer2DModel``, commit aeba85e),
assembled from diffusers' public parts, with parameter names as in the published ``transformer/`` weights.

Token grid [B, H, W] -> ``embed`` (embedding, RMSNorm, 1x1 conv) -> ``down_block`` (RMSNorm, 2x2 stride-2 conv:
the grid is halved) -> image tokens [B, h w, C] -> ``num_layers`` dual-stream Flux blocks (text and image streams,
joint attention) -> ``num_single_layers`` single-stream Flux blocks over [text; image] -> image tokens back on the
(h, w) grid -> ``up_block`` (RMSNorm, 2x2 stride-2 transposed conv) -> the feature [B, C, H, W] -> ``mlm_layer``
(1x1 conv, RMSNorm, 1x1 conv) -> logits [B, codebook_size, H, W].

Conditioning: CLIP ``hidden_states[-2]`` through ``context_embedder`` + RMSNorm (the text stream); the pooled CLIP
``text_embeds`` and a 256-channel sinusoid (cos first) of each of the five micro-conditions [width, height, crop
top, crop left, aesthetic score] through ``cond_embed``, then with the sinusoid of ``timestep`` x 1000 through
diffusers' ``CombinedTimestepTextProjEmbeddings`` (temb, which modulates every block).

Positions: RoPE on three axes (0, row, col) of the grid the attention actually sees (h, w), the 77 text tokens at
(0, 0, 0), as diffusers' ``FluxPosEmbed`` computes them (float64 angles, interleaved pairs). The official pipeline
builds that grid for an image height of exactly 1024 px only (for any other height it passes a grid twice as large
on each side, which a model with ``downsample`` cannot run); here it always comes from the token grid, so every
size works and 1024 px is unchanged. The tables are cached per grid and device.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

from ..generator import ShortcutError

TEXT_TOKENS = 77  # the pipeline pads or truncates every prompt to 77 tokens
MICRO_CONDS = 5  # width, height, crop top, crop left, aesthetic score
MICRO_COND_CHANNELS = 256  # sinusoid channels per micro-condition
NORM_EPS = 1e-6  # every RMSNorm of the model (hard-coded upstream)
ROPE_THETA = 10000
TIMESTEP_SCALE = 1000  # the forward multiplies the timestep it is given by 1000
MIN_DIFFUSERS = "0.35"  # FluxSingleTransformerBlock takes the text stream apart from the image stream since 0.35


@dataclass
class MeissonicConfig:
    """The fields of ``transformer/config.json`` the model uses (``patch_size``, ``in_channels`` and
    ``guidance_embeds`` are stored upstream but unused)."""

    num_layers: int
    num_single_layers: int
    num_attention_heads: int
    attention_head_dim: int
    joint_attention_dim: int
    pooled_projection_dim: int
    axes_dims_rope: Sequence[int]
    vocab_size: int
    codebook_size: int
    downsample: bool = False
    upsample: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def block_out_channels(self) -> int:
        """The width entering ``mlm_layer`` (the name aMUSEd's UVit2D config gives it): ``inner_dim`` here."""
        return self.inner_dim

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.json") -> "MeissonicConfig":
        """The config of a Meissonic transformer, refusing one it cannot build (the message names the field)."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names[:9] if name not in data]
        if missing:
            raise ShortcutError(f"{source}: not a Meissonic transformer config (missing {', '.join(missing)})")
        config = cls(**{name: data[name] for name in names if name in data})
        config.axes_dims_rope = [int(d) for d in config.axes_dims_rope]
        config.validate(source)
        return config

    def validate(self, source: str = "config.json") -> None:
        inner = self.inner_dim
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(d % 2 for d in self.axes_dims_rope):
            raise ShortcutError(f"{source}: axes_dims_rope {list(self.axes_dims_rope)} must be even and sum to "
                                f"attention_head_dim {self.attention_head_dim}")
        if self.pooled_projection_dim != inner:
            raise ShortcutError(f"{source}: pooled_projection_dim {self.pooled_projection_dim} must equal "
                                f"num_attention_heads x attention_head_dim = {inner} (cond_embed feeds it)")
        if not 0 < self.codebook_size < self.vocab_size:
            raise ShortcutError(f"{source}: codebook_size {self.codebook_size} must be below vocab_size "
                                f"{self.vocab_size} (the mask token lies above the codebook)")
        if self.downsample != self.upsample:
            raise ShortcutError(f"{source}: downsample ({self.downsample}) and upsample ({self.upsample}) must agree: "
                                "the head reads the grid the tokens came in on")


def require_diffusers() -> None:
    """Refuse a diffusers whose Flux single-stream block has the older signature, before any weight is read."""
    import diffusers
    from packaging.version import Version

    if Version(diffusers.__version__) < Version(MIN_DIFFUSERS):
        raise ShortcutError(f"the Meissonic backend needs diffusers >= {MIN_DIFFUSERS} (installed "
                            f"{diffusers.__version__}): pip install -U diffusers")


class GridResample(nn.Module):
    """Holds the down- or up-sampling layer under the name upstream gives it (``down_block.downsample``,
    ``up_block.upsample``); identity when the config has none."""

    def __init__(self, **layers: nn.Module):
        super().__init__()
        for name, layer in layers.items():
            setattr(self, name, layer)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            grid = layer(grid)
        return grid


class MeissonicTransformer(nn.Module):
    """``Transformer2DModel`` of Meissonic. ``feature`` stops at the input of ``mlm_layer`` (what the shortcut
    predicts); ``forward`` adds ``mlm_layer`` and returns the logits [B, codebook_size, H, W] as upstream does."""

    def __init__(self, config: MeissonicConfig):
        super().__init__()
        require_diffusers()
        from diffusers.models.downsampling import Downsample2D
        from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings, TimestepEmbedding
        from diffusers.models.normalization import RMSNorm
        from diffusers.models.transformers.transformer_flux import (FluxPosEmbed, FluxSingleTransformerBlock,
                                                                     FluxTransformerBlock)
        from diffusers.models.unets.uvit_2d import ConvMlmLayer, UVit2DConvEmbed
        from diffusers.models.upsampling import Upsample2D

        config.validate()
        self.config = config
        inner, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        self.pos_embed = FluxPosEmbed(theta=ROPE_THETA, axes_dim=list(config.axes_dims_rope))
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(embedding_dim=inner,
                                                                  pooled_projection_dim=config.pooled_projection_dim)
        self.context_embedder = nn.Linear(config.joint_attention_dim, inner)
        self.transformer_blocks = nn.ModuleList(FluxTransformerBlock(inner, heads, head_dim)
                                                for _ in range(config.num_layers))
        self.single_transformer_blocks = nn.ModuleList(FluxSingleTransformerBlock(inner, heads, head_dim)
                                                       for _ in range(config.num_single_layers))
        self.embed = UVit2DConvEmbed(inner, inner, config.vocab_size, True, NORM_EPS, False)
        self.mlm_layer = ConvMlmLayer(inner, inner, False, True, NORM_EPS, config.codebook_size)
        self.cond_embed = TimestepEmbedding(MICRO_CONDS * MICRO_COND_CHANNELS + config.pooled_projection_dim, inner,
                                            sample_proj_bias=False)
        self.encoder_proj_layer_norm = RMSNorm(inner, NORM_EPS, True)
        self.project_to_hidden_norm = RMSNorm(inner, NORM_EPS, True)
        self.project_to_hidden = nn.Linear(inner, inner, bias=False)
        self.project_from_hidden_norm = RMSNorm(inner, NORM_EPS, True)
        self.project_from_hidden = nn.Linear(inner, inner, bias=False)
        resample = dict(kernel_size=2, padding=0, norm_type="rms_norm", eps=NORM_EPS, elementwise_affine=True,
                        bias=False)
        self.down_block = GridResample(**({"downsample": Downsample2D(inner, use_conv=True, name="Conv2d_0",
                                                                       **resample)} if config.downsample else {}))
        self.up_block = GridResample(**({"upsample": Upsample2D(inner, use_conv_transpose=True, name="conv",
                                                                interpolate=False, **resample)}
                                        if config.upsample else {}))
        self._rotary: dict = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.context_embedder.weight.dtype

    @property
    def scale(self) -> int:
        """How many token-grid cells one attention position covers per side (2 with down/up-sampling)."""
        return 2 if self.config.downsample else 1

    # -- conditioning --------------------------------------------------------------------------------------------

    def time_embedding(self, pooled: torch.Tensor, micro_conds: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """temb [B, C]: pooled text + sinusoids of the micro-conditions (``cond_embed``) + sinusoid of timestep x 1000.

        ``timestep`` [1] or [B]; upstream scales it by 1000 in the model's dtype (bf16 rounds 63 000 to 62 976)."""
        from diffusers.models.embeddings import get_timestep_embedding

        micro = get_timestep_embedding(micro_conds.flatten(), MICRO_COND_CHANNELS, flip_sin_to_cos=True,
                                       downscale_freq_shift=0).reshape(pooled.shape[0], -1)
        cond = self.cond_embed(torch.cat([pooled, micro], dim=1).to(self.dtype))
        return self.time_text_embed(timestep.to(self.dtype) * TIMESTEP_SCALE, cond)

    def rotary(self, grid: tuple[int, int], text_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin) [text_len + h w, head_dim] for text at (0, 0, 0) then the (h, w) grid row-major."""
        key = (tuple(grid), int(text_len), str(device))
        if key not in self._rotary:
            height, width = grid
            rows = torch.arange(height, dtype=torch.float32, device=device).repeat_interleave(width)
            cols = torch.arange(width, dtype=torch.float32, device=device).repeat(height)
            image = torch.stack([torch.zeros_like(rows), rows, cols], dim=1)
            ids = torch.cat([torch.zeros(text_len, 3, device=device), image], dim=0)
            self._rotary[key] = self.pos_embed(ids)
        return self._rotary[key]

    # -- the model -----------------------------------------------------------------------------------------------

    def feature(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor,
                micro_conds: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The input of ``mlm_layer`` [B, C, H, W] for token ids [B, H, W] (H, W even with down/up-sampling)."""
        batch, height, width = input_ids.shape
        if height % self.scale or width % self.scale:
            raise ShortcutError(f"a {height} x {width} token grid cannot be halved; Meissonic needs even grid sides")
        temb = self.time_embedding(pooled_projections, micro_conds, timestep)
        text = self.encoder_proj_layer_norm(self.context_embedder(encoder_hidden_states))
        grid = self.down_block(self.embed(input_ids))
        channels, rows, cols = grid.shape[1:]
        image = grid.permute(0, 2, 3, 1).reshape(batch, rows * cols, channels)
        image = self.project_to_hidden(self.project_to_hidden_norm(image))
        rope = self.rotary((rows, cols), text.shape[1], image.device)
        for block in self.transformer_blocks:
            text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        for block in self.single_transformer_blocks:
            text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        image = self.project_from_hidden(self.project_from_hidden_norm(image))
        return self.up_block(image.reshape(batch, rows, cols, channels).permute(0, 3, 1, 2))

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor,
                micro_conds: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.mlm_layer(self.feature(input_ids, encoder_hidden_states, pooled_projections, micro_conds, timestep))
