"""The settings of a fit: what decides the result (``FitSettings``), how a run goes (``RunOptions``) and online
sampling (``OnlineSettings``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..dtypes import AMP_MODES
from ..generator import ShortcutError

ONLINE_VAL_OFFSET = 1_000_000  # online validation batches use condition/seed indices from here on
# FitSettings fields a resumed run must share with its checkpoint (the others do not change the result).
RESULT_SETTINGS = ("batch_size", "lr", "weight_decay", "lr_drop_step", "ema", "grad_clip", "val_fraction",
                   "loss_positions", "seed", "mse_weight", "kl_weight", "kl_temperature", "rollout", "amp")


@dataclass
class FitSettings:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-2
    lr_drop_step: int = 1000
    ema: float = 0.9999
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    loss_positions: str = "masked"
    seed: int = 0
    eval_every: int = 500
    mse_weight: float = 1.0
    kl_weight: float = 0.0
    kl_temperature: float = 1.0
    rollout: int = 1
    amp: str = "auto"
    val_limit: int = 2048

    def validate(self) -> None:
        checks = (
            (self.loss_positions in ("masked", "all"),
             f"loss_positions must be 'masked' or 'all', got {self.loss_positions!r}"),
            (0 < self.val_fraction < 1, f"val_fraction must be between 0 and 1, got {self.val_fraction}"),
            (self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1"),
            (self.rollout >= 1, f"rollout must be >= 1, got {self.rollout}"),
            (self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}"),
            (self.kl_temperature > 0, f"kl_temperature must be > 0, got {self.kl_temperature}"),
            (self.mse_weight >= 0 and self.kl_weight >= 0 and self.mse_weight + self.kl_weight > 0,
             "mse_weight and kl_weight must be >= 0 and not both 0"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
        )
        for ok, message in checks:
            if not ok:
                raise ShortcutError(message)


@dataclass
class RunOptions:
    """How a fit runs (none of this changes the result)."""

    checkpoint: Optional[Path] = None  # written every ``checkpoint_every`` steps and when the run stops
    checkpoint_every: int = 500
    resume: bool = False  # continue from ``checkpoint`` when it exists
    max_steps: Optional[int] = None  # stop this run at this global step (resume later)
    max_minutes: Optional[float] = None  # stop this run after this wall time (resume later)
    data_in_memory: str = "auto"  # "auto", "yes", "no" (memory-mapped)
    memory_fraction: float = 0.4  # auto: load into memory when the data is below this fraction of free RAM
    log_every: int = 50
    progress: bool = True
    prefetch: bool = True  # read the next batch in a background thread (memory-mapped data)


@dataclass
class OnlineSettings:
    """Online fitting: ``batch`` images per sampler run, the last ``buffer`` runs kept, one new run every
    ``refresh_every`` training steps; ``val_batches`` runs (fixed seeds) held out for validation."""

    batch: int = 8
    buffer: int = 8
    refresh_every: int = 4
    val_batches: int = 1
    storage: str = "fp16"

    def validate(self) -> None:
        if min(self.batch, self.buffer, self.refresh_every, self.val_batches) < 1:
            raise ShortcutError("online batch, buffer, refresh_every and val_batches must be >= 1")
