"""The generator protocol: what a masked image generation model (MIGM) must say for the shortcut sampler.

The sampler works on a grid of image codes ``codes`` [B, L] (L = grid height * width, values in
0..codebook_size-1) with a boolean ``masked`` [B, L]. A backend turns that state into its own token sequence
and runs its transformer; it never sees schedules, budgets or shortcut weights.

Rows of a feature tensor are CFG branches stacked branch-major: rows [0:B] are the conditional branch,
rows [B:2B] the unconditional one when guidance is on. A backend whose branches have different sequence
lengths pads them and says so in ``Context.padding``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn


class ShortcutError(ValueError):
    """A value a user can fix: the message names the value and what is allowed."""


@dataclass
class Condition:
    """What to generate: class labels (class-to-image) or prompts (text-to-image), one per image."""

    labels: Optional[Sequence[int]] = None
    prompts: Optional[Sequence[str]] = None
    negative_prompts: Optional[Sequence[str]] = None


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

    ``batch_size`` images, ``branches`` = 2 with classifier-free guidance else 1. ``padding`` is None or a bool
    [branches * B, T] marking padded feature positions (True = padding) for backends with ragged branches.
    ``extra`` holds whatever else the backend needs (class tokens, prompt ids, caches). ``step`` of ``steps`` is the
    sampler's step, set before each base call, for models conditioned on it (Meissonic feeds N - 1 - step).
    """

    batch_size: int
    branches: int
    device: torch.device
    padding: Optional[torch.Tensor] = None
    extra: dict = field(default_factory=dict)
    step: int = 0
    steps: int = 1

    @property
    def rows(self) -> int:
        return self.batch_size * self.branches


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
    """A masked image generation model seen by the sampler.

    Subclasses set the attributes below in ``__init__`` and implement the abstract methods. ``identity``
    names the exact base weights; shortcut weights record it and refuse to load on another generator.
    """

    identity: str
    feature_dim: int
    codebook_size: int
    grid_size: tuple[int, int]
    condition_kind: str  # "class" or "text"
    num_classes: int = 0
    class_names: Sequence[str] = ()
    shortcut_arch: str = "maskgit"
    default_settings: dict = {}

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

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

    def image_positions(self, ctx: Context) -> torch.Tensor:
        """Indices [L] of the image tokens in the feature sequence (row-major grid order)."""
        return torch.arange(self.num_tokens, device=ctx.device)

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes [B, L] to images [B, 3, H, W] in 0..1 (float32)."""

    def describe(self) -> dict[str, Any]:
        """Facts recorded with trajectories and shortcut weights."""
        return {
            "generator": self.identity,
            "feature_dim": self.feature_dim,
            "codebook_size": self.codebook_size,
            "grid": list(self.grid_size),
            "shortcut_arch": self.shortcut_arch,
        }


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
