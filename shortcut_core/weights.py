"""Shortcut weights as a value (``ShortcutWeights``) and their file format.

Our files are safetensors: the network's tensors, the step-error tables as ``step_errors.<N>`` tensors, and JSON
metadata (format, architecture config, the generator they were fitted for, the training report, the measured
per-call ratio). Official releases (``torch.save(state_dict)``, no metadata) load too, read without running
pickled code (``files.load_tensors``).
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import safe_open
from torch import nn

from .dtypes import synchronize
from .files import load_tensors, read_metadata, save_safetensors
from .generator import Condition, MaskedGenerator, ShortcutError
from .shortcut import ShortcutConfig, build_shortcut, shortcut_class
from .validation import check_finite_tensors

log = logging.getLogger(__name__)

SHORTCUT_FORMAT = "migm-shortcut"
GENERATOR_FORMAT = "migm-generator"
STEP_ERRORS_PREFIX = "step_errors."  # + N: measured [N, N] shortcut error table for the searched schedule
PER_CALL_RATIO = "per_call_ratio"  # metadata key: shortcut call time / base call time, measured when fitted


@dataclass
class ShortcutWeights:
    """Shortcut weights as one value: the network, where it comes from, and what was measured on it.

    ``generator_info``: ``describe()`` of the generator it was fitted for (empty for official files, which do not
    say); ``training``: the fitting report; ``step_errors``: N -> [N, N] shortcut error table measured on held-out
    trajectories (``full_step_rule="searched"``); ``per_call_ratio``: one shortcut call's time over one base-model
    call's, measured on the machine that fitted it (None when unknown).
    """

    network: nn.Module
    generator_info: dict = field(default_factory=dict)
    training: Optional[dict] = None
    step_errors: dict[int, torch.Tensor] = field(default_factory=dict)
    step_errors_info: Optional[dict] = None
    per_call_ratio: Optional[float] = None
    source: str = ""

    @property
    def config(self) -> ShortcutConfig:
        return self.network.config

    @property
    def generator(self) -> str:
        """Identity of the generator these weights were fitted for ("" when the file does not say)."""
        return str(self.generator_info.get("generator", "") or "")


def save_shortcut(path: Path, weights: ShortcutWeights) -> None:
    """Shortcut weights as safetensors with what is needed to rebuild and check them."""
    config = weights.config
    metadata = {"format": SHORTCUT_FORMAT, "format_version": "1", "config": config.to_dict(),
                "generator": weights.generator, "feature_dim": config.feature_dim,
                "generator_info": weights.generator_info}
    if weights.training:
        metadata["training"] = weights.training
    if weights.per_call_ratio is not None:
        metadata[PER_CALL_RATIO] = float(weights.per_call_ratio)
    tensors = dict(weights.network.state_dict())
    for steps, table in weights.step_errors.items():
        tensors[f"{STEP_ERRORS_PREFIX}{int(steps)}"] = table.detach().float().cpu().contiguous()
    if weights.step_errors and weights.step_errors_info:
        metadata["step_errors"] = weights.step_errors_info
    save_safetensors(path, tensors, metadata)


def load_shortcut(path: Path, generator: Optional[MaskedGenerator] = None, num_heads: Optional[int] = None,
                  check_identity: bool = True) -> ShortcutWeights:
    """Shortcut weights from our safetensors format or an official ``torch.save(state_dict)`` file.

    With ``generator`` given, refuses weights fitted for another feature size, architecture or generator, and
    moves the network to the generator's device and dtype. Official files carry no metadata: the architecture is
    the generator's, the head count ``num_heads``, else the generator's ``shortcut_num_heads``, else the
    architecture's default (16 for the released MaskGIT weights).
    """
    path = Path(path)
    state = load_tensors(path)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ShortcutError(f"{path}: this is a training checkpoint, not a shortcut state dict")
    check_finite_tensors(state.items(), str(path))
    step_errors = {int(k[len(STEP_ERRORS_PREFIX):]): state.pop(k) for k in list(state)
                   if k.startswith(STEP_ERRORS_PREFIX)}
    metadata = read_metadata(path) if path.suffix == ".safetensors" else {}
    if metadata.get("format") == SHORTCUT_FORMAT:
        config = ShortcutConfig.from_dict(metadata["config"])
        if num_heads is not None:
            config.num_heads = num_heads
    elif metadata.get("format") not in (None, ""):
        raise ShortcutError(f"{path}: this is a {metadata['format']!r} file, not shortcut weights "
                            f"(expected format {SHORTCUT_FORMAT!r})")
    else:
        arch = generator.shortcut_arch if generator is not None else "maskgit"
        heads = num_heads or (generator.shortcut_num_heads if generator is not None else None)
        try:
            config = shortcut_class(arch).config_from_state_dict(state, heads)
        except ShortcutError as err:
            raise ShortcutError(f"{path}: {err}") from err
    weights = ShortcutWeights(build_shortcut(config), generator_info=dict(metadata.get("generator_info") or {}),
                              training=metadata.get("training"), step_errors=step_errors,
                              step_errors_info=metadata.get("step_errors") if step_errors else None,
                              per_call_ratio=per_call_ratio_of(metadata), source=str(path))
    if metadata.get("generator") and not weights.generator:
        weights.generator_info["generator"] = metadata["generator"]
    if generator is not None:
        _check_fits(path, weights, generator, check_identity)
    try:
        missing, unexpected = weights.network.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ShortcutError(f"{path}: weights do not fit a {config.arch} shortcut of this shape: "
                            f"{str(err).splitlines()[-1].strip()}") from err
    if missing or unexpected:
        raise ShortcutError(f"{path}: weights do not fit a {config.arch} shortcut of this shape "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    weights.network.eval()
    if generator is not None:
        weights.network.to(device=generator.device, dtype=generator.dtype)
    return weights


def per_call_ratio_of(metadata: dict) -> Optional[float]:
    """The per-call ratio stored in weights metadata when they were fitted; None when absent or not a plausible
    ratio (a finite number between 0 and 1000)."""
    try:
        value = float(metadata.get(PER_CALL_RATIO))
    except (TypeError, ValueError):
        return None
    return value if 0 < value < 1e3 else None


def read_step_errors(path: Path) -> dict[int, torch.Tensor]:
    """The step-error tables (steps -> [N, N]) of a safetensors weights file, read without building the network."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return {int(k[len(STEP_ERRORS_PREFIX):]): handle.get_tensor(k) for k in handle.keys()
                if k.startswith(STEP_ERRORS_PREFIX)}


def _check_fits(path: Path, weights: ShortcutWeights, generator: MaskedGenerator, check_identity: bool) -> None:
    config = weights.config
    if config.feature_dim != generator.feature_dim:
        raise ShortcutError(f"{path}: these shortcut weights expect features of size {config.feature_dim}, "
                            f"but generator {generator.identity!r} has {generator.feature_dim}")
    if check_identity and weights.generator and weights.generator != generator.identity:
        raise ShortcutError(f"{path}: these shortcut weights were fitted for generator {weights.generator!r}, "
                            f"not {generator.identity!r}")
    if config.arch != generator.shortcut_arch:
        raise ShortcutError(f"{path}: shortcut architecture {config.arch!r} does not fit generator "
                            f"{generator.identity!r} (needs {generator.shortcut_arch!r})")


@torch.no_grad()
def measure_per_call_ratio(generator: MaskedGenerator, network: nn.Module, condition: Condition, guidance: bool,
                           repeats: int = 3) -> float:
    """One shortcut call's time over one base-model call's on this machine, as the sampler times them (the
    shortcut call includes embedding the new tokens): medians of ``repeats`` calls each, taken in turns after
    one warm-up call, on an all-masked state of ``condition`` with a few tokens just decoded."""
    device = generator.device
    ctx = generator.prepare(condition, condition.size, guidance)
    codes = torch.zeros(condition.size, generator.num_tokens, dtype=torch.long, device=device)
    masked = torch.ones_like(codes, dtype=torch.bool)
    new_map = torch.zeros_like(masked)
    new_map[:, : max(1, generator.num_tokens // 16)] = True
    ratio = torch.full((ctx.rows,), 1.0, device=device)
    shortcut = network
    if next(network.parameters()).dtype != generator.dtype:
        shortcut = build_shortcut(network.config).to(device=device, dtype=generator.dtype)
        shortcut.load_state_dict(network.state_dict())
    shortcut.eval()

    def base() -> torch.Tensor:
        return generator.features(codes, masked, ctx)

    feature = base()

    def predicted() -> torch.Tensor:
        return shortcut(feature, generator.new_tokens(codes, new_map, ctx), ratio, ctx.padding)

    times: dict = {base: [], predicted: []}
    for turn in range(repeats + 1):
        for call in times:
            synchronize(device)
            started = time.perf_counter()
            call()
            synchronize(device)
            if turn:
                times[call].append(time.perf_counter() - started)
    return statistics.median(times[predicted]) / max(statistics.median(times[base]), 1e-12)

