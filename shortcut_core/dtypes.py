"""Devices and dtypes by the names flags and widgets use: one table, read by loading, sampling, fitting and
recording."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .generator import ShortcutError
from .validation import check_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_DTYPES = {"auto": None, **DTYPES}  # weights; auto = bf16 on GPUs that support it, else fp32
AUTOCAST_DTYPES = {"none": None, "bf16": DTYPES["bf16"], "fp16": DTYPES["fp16"]}
AMP_MODES = ("auto",) + tuple(AUTOCAST_DTYPES)  # fitting: auto = bf16 (fp16 where bf16 is missing) on CUDA
STORAGE_DTYPES = {name: DTYPES[name] for name in ("fp16", "bf16", "fp32")}  # recorded features, default first


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in MODEL_DTYPES:
        raise ShortcutError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, got {name!r}")
    chosen = MODEL_DTYPES[name]
    if chosen is None:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return chosen


def resolve_device(name: str = "auto") -> torch.device:
    return check_device(name)


def resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of an ``AMP_MODES`` name on ``device`` (None = no autocast)."""
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return AUTOCAST_DTYPES[mode]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device`` in ``dtype``, or a context that does nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
