"""The generator contract: everything a masked image generation model (MIGM) says to the sampler, the recorder,
the fitter and the nodes. A backend is one subclass of ``MaskedGenerator``; generic code reads nothing else.

The sampler works on a grid of image codes ``codes`` [B, L] (L = grid height * width, values in
0..codebook_size-1) with a boolean ``masked`` [B, L]. A backend turns that state into its own token sequence
and runs its transformer; it never sees schedules, budgets or shortcut weights.

Rows of a feature tensor are CFG branches stacked branch-major: rows [0:B] are the conditional branch,
rows [B:2B] the unconditional one when guidance is on. A backend whose rows have different sequence lengths
right-pads them and says so in ``Context.padding`` / ``Context.lengths``.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn


class ShortcutError(ValueError):
    """A value a user can fix: the message names the value and what is allowed."""


@dataclass
class Condition:
    """What to generate: class labels (class-to-image) or prompts (text-to-image), one per image.

    ``negative_prompts``: none, one for every image, or one per image (text generators' unconditional branch)."""

    labels: Optional[Sequence[int]] = None
    prompts: Optional[Sequence[str]] = None
    negative_prompts: Optional[Sequence[str]] = None

    @property
    def size(self) -> int:
        return len(self.labels if self.labels is not None else self.prompts or [])

    def negatives(self, batch_size: int) -> list[Optional[str]]:
        """The negative prompt of each image (None where none was given)."""
        given = list(self.negative_prompts or [])
        if given and len(given) not in (1, batch_size):
            raise ShortcutError(f"give one negative prompt, or one per image ({batch_size}); got {len(given)}")
        return [(given[b if len(given) > 1 else 0] or None) if given else None for b in range(batch_size)]


def per_row(default: Any = None):
    """A ``Context`` field with one entry per feature row (a tensor [R, ...] or a list of R): fitting gathers it
    row by row when it rebuilds the context of recorded rows (``Context.from_rows``)."""
    return field(default=default, metadata={"per_row": True})


@dataclass(frozen=True)
class GeneratorCard:
    """What a generator file or folder says about itself, read without loading any weights: enough for menus
    (which files are generators, which classes one draws, its own sampler settings) before anything runs."""

    condition_kind: str  # "class" or "text"
    class_names: tuple[str, ...] = ()
    default_settings: dict = field(default_factory=dict)


@dataclass
class Context:
    """Per-run state a backend builds once in ``prepare`` and reads at every step.

    ``batch_size`` images, ``branches`` = 2 with classifier-free guidance else 1; ``rows`` = their product.
    ``step`` of ``steps`` is the sampler's step, set before each base call, for models conditioned on it
    (Meissonic feeds N - 1 - step). Backends subclass it with their own typed fields (``per_row`` for those with
    one entry per row).
    """

    batch_size: int
    branches: int
    device: torch.device
    padding: Optional[torch.Tensor] = None  # [R, T] bool, True = padded feature position; None = no padding
    lengths: Optional[list[int]] = per_row()  # each row's own sequence length; None = every row is T long
    image_index: Optional[torch.Tensor] = per_row()  # [R, L] image positions per row; None = 0..L-1
    step: int = 0
    steps: int = 1

    @property
    def rows(self) -> int:
        return self.batch_size * self.branches

    def row_length(self, row: int, length: int) -> int:
        """Sequence length of ``row`` in features of ``length`` positions."""
        if self.lengths is not None:
            return int(self.lengths[row])
        if self.padding is not None:
            return int((~self.padding[row]).sum())
        return length

    @classmethod
    def from_rows(cls, parts: Sequence[tuple["Context", int]], length: int, device: torch.device) -> "Context":
        """One context (branches = 1) whose row r is row ``parts[r][1]`` of context ``parts[r][0]``, for features of
        ``length`` positions. ``per_row`` fields are gathered (tensors zero-padded to a common size), the others
        come from the first context; ``padding`` marks each row's positions past its own length."""
        first = parts[0][0]
        values = {}
        for spec in dataclasses.fields(first):
            if spec.name in ("batch_size", "branches", "device", "padding", "lengths"):
                continue
            value = getattr(first, spec.name)
            if spec.metadata.get("per_row") and value is not None:
                pieces = [getattr(ctx, spec.name)[r] for ctx, r in parts]
                values[spec.name] = _stack(pieces, device) if torch.is_tensor(value) else pieces
            else:
                values[spec.name] = value
        lengths = [ctx.row_length(r, length) for ctx, r in parts]
        if max(lengths) > length:
            raise ShortcutError(f"a recorded feature has {length} positions but its condition needs {max(lengths)}: "
                                "the dataset does not match this generator's sequence layout")
        padding = torch.arange(length, device=device)[None, :] >= torch.tensor(lengths, device=device)[:, None]
        return type(first)(batch_size=len(parts), branches=1, device=device,
                           padding=padding if bool(padding.any()) else None, lengths=lengths, **values)


def _stack(pieces: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if any(p.shape != pieces[0].shape for p in pieces):
        size = max(p.shape[0] for p in pieces)
        pieces = [torch.cat([p, p.new_zeros((size - p.shape[0], *p.shape[1:]))]) for p in pieces]
    return torch.stack(pieces).to(device)


@dataclass
class NewTokens:
    """The tokens decoded at the previous step, ready for the shortcut's cross-attention.

    ``embeddings`` [R, n, D] in the base model's feature width (token embedding plus any additive position
    embedding), ``positions`` [R, n] their indices in the feature sequence (for rotary positions),
    ``valid`` [R, n] False on padding when rows decoded different numbers of tokens.
    """

    embeddings: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor


class MaskedGenerator(nn.Module, ABC):
    """A masked image generation model seen by the sampler, the recorder, the fitter and the nodes.

    Subclasses set the attributes without a default in ``__init__`` and implement the abstract methods; every
    other member has a default that suits a model of L image tokens at fixed positions. ``identity`` names the
    exact base weights; shortcut weights record it and refuse to load on another generator.
    """

    identity: str
    feature_dim: int
    codebook_size: int
    grid_size: tuple[int, int]
    condition_kind: str  # "class" or "text"
    num_classes: int = 0
    class_names: Sequence[str] = ()
    # Sampler settings of the reference code (``SamplerSettings`` fields), plus "shortcut": default weights path.
    default_settings: dict = {}
    # The shortcut network architecture (``shortcut.SHORTCUT_ARCHS``) fitted on this model's features.
    shortcut_arch: str = "maskgit"
    # Head count of official shortcut weights without metadata for this model; None = the architecture's default.
    shortcut_num_heads: Optional[int] = None
    # True when ``head`` / ``new_tokens`` depend on each row's condition (e.g. where the prompt puts the image):
    # fitting then rebuilds the Context of every recorded row; False = a bare ``Context(rows, 1)`` serves them.
    per_row_context: bool = False
    # (width, height) in px for generators that draw at several sizes (``set_image_size``); None = one fixed size.
    image_size: Optional[tuple[int, int]] = None
    # Children kept in float32 whatever dtype the rest gets (the image decoder, as the reference pipelines keep it).
    float32_modules: tuple[str, ...] = ("vq",)

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def cast(self, dtype: torch.dtype) -> "MaskedGenerator":
        """Every child but ``float32_modules`` to ``dtype``."""
        for name, child in self.named_children():
            if name not in self.float32_modules:
                child.to(dtype=dtype)
        return self

    def set_image_size(self, width: int, height: int) -> None:
        """Output size in px (changes ``grid_size``). Generators with one fixed size (``image_size`` None) refuse."""
        raise ShortcutError(f"generator {self.identity!r} draws at one fixed size; leave the width and height unset")

    def check_condition(self, condition: Condition, batch_size: int) -> None:
        """Refuse a condition this generator cannot take, naming what it can."""
        if self.condition_kind == "class":
            if condition.labels is None:
                raise ShortcutError(f"generator {self.identity!r} is class-conditional: give class labels "
                                    f"0..{self.num_classes - 1}")
            if len(condition.labels) != batch_size:
                raise ShortcutError(f"got {len(condition.labels)} class labels for a batch of {batch_size}")
            for label in condition.labels:
                if not 0 <= int(label) < self.num_classes:
                    raise ShortcutError(f"class label {int(label)} is out of range: allowed 0..{self.num_classes - 1}")
        elif self.condition_kind == "text":
            if condition.prompts is None or len(condition.prompts) != batch_size:
                raise ShortcutError(f"generator {self.identity!r} is text-to-image: give one prompt per image "
                                    f"({batch_size})")

    @abstractmethod
    def prepare(self, condition: Condition, batch_size: int, guidance: bool) -> Context:
        """Build the per-run context (conditioning tokens for each CFG branch)."""

    @abstractmethod
    def features(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Run the base model on the current state of every branch: last hidden state [R, T, D]."""

    @abstractmethod
    def head(self, feature: torch.Tensor, ctx: Context, masked: torch.Tensor) -> torch.Tensor:
        """Logits over image codes at the image positions [R, L, K] from a feature [R, T, D].

        ``masked`` [B, L] says where logits will be read; a backend may leave other positions arbitrary.
        """

    @abstractmethod
    def new_tokens(self, codes: torch.Tensor, new_map: torch.Tensor, ctx: Context) -> NewTokens:
        """Embed the codes decoded at the previous step (``new_map`` [B, L]) for every branch row."""

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes [B, L] to images [B, 3, H, W] in 0..1 (float32)."""

    def image_positions(self, ctx: Context) -> torch.Tensor:
        """Indices [R, L] of each row's image tokens in its feature sequence (row-major grid order)."""
        if ctx.image_index is not None:
            return ctx.image_index
        return torch.arange(self.num_tokens, device=ctx.device).expand(ctx.rows, -1)

    @torch.no_grad()
    def sequence_length(self, ctx: Context) -> int:
        """Feature positions T of the rows of ``ctx`` (the longest row). The default runs the base model once;
        a backend that knows its layout answers without it."""
        if ctx.padding is not None:
            return int(ctx.padding.shape[1])
        codes = torch.zeros(ctx.batch_size, self.num_tokens, dtype=torch.long, device=self.device)
        return int(self.features(codes, torch.ones_like(codes, dtype=torch.bool), ctx).shape[1])

    def default_shortcut_config(self, bottleneck_ratio: float = 2, n_blocks: int = 1,
                                num_heads: Optional[int] = None):
        """The shortcut architecture fitted on this model by default: width D / ratio, one head per 32 channels."""
        from .shortcut import ShortcutConfig
        width = round(self.feature_dim / bottleneck_ratio)
        return ShortcutConfig(feature_dim=self.feature_dim, bottleneck_ratio=bottleneck_ratio, n_blocks=n_blocks,
                              num_heads=num_heads or max(1, width // 32), arch=self.shortcut_arch)

    @property
    def preset_family(self) -> str:
        """The model family named in ``presets.PRESETS`` tags (presets made for it); default its shortcut arch."""
        return self.shortcut_arch

    def describe(self) -> dict[str, Any]:
        """Facts recorded with trajectories and shortcut weights."""
        return {
            "generator": self.identity,
            "feature_dim": self.feature_dim,
            "codebook_size": self.codebook_size,
            "grid": list(self.grid_size),
            "shortcut_arch": self.shortcut_arch,
        }


def take_positions(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``feature`` [R, T, D] at positions ``index`` [R, n]: [R, n, D]."""
    return feature.gather(1, index[..., None].expand(-1, -1, feature.shape[-1]))


def gather_new_tokens(new_map: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack the positions marked in ``new_map`` [B, L] into padded [B, n] (ids, positions, valid).

    Rows may decode different numbers of tokens; ``n`` is the largest count and padding points at position 0.
    """
    counts = new_map.sum(dim=1)
    width = max(int(counts.max().item()) if counts.numel() else 0, 1)
    order = torch.argsort((~new_map).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=new_map.device)[None, :] < counts[:, None]
    positions = torch.where(valid, order, torch.zeros_like(order))
    ids = torch.gather(codes, 1, positions)
    return ids, positions, valid
