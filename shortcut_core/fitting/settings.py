"""The settings of a fit: what decides the result (``FitSettings``), how a run goes (``RunOptions``) and online
sampling (``OnlineSettings``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..dtypes import AMP_MODES
from ..generator import ShortcutError
from ..validation import check_choice, check_number

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
        """Refuse settings no fit can use (NaN and inf too), naming the field, what is allowed and the value."""
        check_choice("loss_positions", self.loss_positions, ("masked", "all"))
        check_choice("amp", self.amp, AMP_MODES)
        for name, limits in FIT_LIMITS.items():
            check_number(name, getattr(self, name), **limits)
        if self.mse_weight + self.kl_weight == 0:
            raise ShortcutError("mse_weight and kl_weight are both 0: nothing to fit; set one of them > 0")


# What each numeric FitSettings field allows (the fitter's command line checks its flags with the same limits).
FIT_LIMITS = {
    "steps": dict(low=1, integer=True), "batch_size": dict(low=1, integer=True), "lr": dict(low=0, low_open=True),
    "weight_decay": dict(low=0), "lr_drop_step": dict(low=0, integer=True),
    "ema": dict(low=0, high=1, high_open=True), "grad_clip": dict(low=0),
    "val_fraction": dict(low=0, high=1, low_open=True, high_open=True), "seed": dict(low=0, high=2 ** 63 - 1, integer=True),
    "eval_every": dict(low=1, integer=True), "mse_weight": dict(low=0), "kl_weight": dict(low=0),
    "kl_temperature": dict(low=0, low_open=True), "rollout": dict(low=1, integer=True),
    "val_limit": dict(low=1, integer=True),
}


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
        for name in ("batch", "buffer", "refresh_every", "val_batches"):
            check_number(f"online {name}", getattr(self, name), low=1, integer=True)
