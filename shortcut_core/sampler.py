"""The interleaved sampler, one for every backend: B of N steps run the base model, the others the shortcut.

Confidence-based unmasking as in the MaskGIT reference: sample a code per masked position from
softmax(logits * sm_temp), score it by its log-probability plus Gumbel noise whose weight r_temp decays
linearly to 0, keep the top-k(i) (k from the token schedule). ``confidence="dimoo"`` scores as Lumina-DiMOO does
instead: log-probability under softmax of the UNscaled (guided) logits plus a constant ``r_temp`` x Gumbel.
``confidence="meissonic"`` replays Meissonic's scheduler (``meissonic_step``): ``torch.multinomial`` draws, its
confidence noise and its guidance form. CFG is ``(1 + w_i) c - w_i u`` with ``w_i = w * i / (N - 1)`` when
ramped. On a shortcut step the feature comes from
``shortcut(previous feature, tokens decoded at the previous step, masked fraction before this step)``;
both CFG branches go through it and features chain from one shortcut step to the next. ``method`` swaps the
shortcut for a training-free baseline on the same steps (``predictors.py``), or runs ``budget`` vanilla steps.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch

from .dtypes import AUTOCAST_DTYPES
from .generator import Condition, MaskedGenerator, ShortcutError
from .predictors import METHODS, make_predictor
from .validation import check_choice, check_number, check_sample_inputs, check_seed
from .schedules import (FULL_STEP_RULES, SEARCHED, TOKEN_SCHEDULES, check_steps_budget, full_steps, searched_full_steps,
                        tokens_per_step)
from .weights import ShortcutWeights

log = logging.getLogger(__name__)

# How a sampled token is scored for keeping: "maskgit" = log softmax(logits * sm_temp)[code] + r_temp (1 - i/(N-1)) g;
# "dimoo" = log softmax(logits)[code] + r_temp g (Lumina-DiMOO: temperature t <=> sm_temp = 1/t, r_temp = t);
# "meissonic" = Meissonic's scheduler step, random stream included (``meissonic_step``).
CONFIDENCE_MODES = ("maskgit", "dimoo", "meissonic")


@dataclass
class SamplerSettings:
    """Everything that decides a run. ``budget`` None means every step is full (the vanilla sampler)."""

    steps: int = 16
    budget: Optional[int] = None
    full_step_rule: str = "official"
    full_steps: Optional[Sequence[int]] = None
    schedule: str = "arccos"
    cfg_scale: float = 3.0
    cfg_ramp: bool = True
    sm_temp: float = 1.0
    r_temp: float = 4.5
    r_temp_end: float = 0.0  # "meissonic" confidence: the Gumbel weight goes linspace(r_temp, r_temp_end, N)
    seed: int = 0
    autocast: str = "none"
    confidence: str = "maskgit"
    method: str = "shortcut"

    @classmethod
    def for_generator(cls, generator) -> "SamplerSettings":
        """The generator's own defaults (its ``default_settings``, other keys such as 'shortcut' ignored)."""
        return cls(**{k: v for k, v in dict(generator.default_settings).items() if k in cls.__dataclass_fields__})

    def resolved_budget(self) -> int:
        return self.steps if self.budget is None else self.budget

    def full_step_list(self, shortcut: Optional[ShortcutWeights] = None) -> list[int]:
        """The full steps; the ``searched`` rule reads the step-error table of the ``shortcut`` weights."""
        if self.full_steps is None and self.full_step_rule == SEARCHED:
            return searched_full_steps(self.steps, self.resolved_budget(),
                                       shortcut.step_errors if shortcut is not None else None)
        return full_steps(self.steps, self.resolved_budget(), self.full_step_rule, self.full_steps)

    def validate(self) -> None:
        """Refuse settings no run can use, naming the field, what is allowed and the value (NaN and inf too)."""
        check_steps_budget(self.steps, self.resolved_budget())
        if self.full_steps is None and self.full_step_rule not in FULL_STEP_RULES + (SEARCHED,):
            check_choice("full_step_rule", self.full_step_rule, FULL_STEP_RULES + (SEARCHED,))
        check_choice("method", self.method, METHODS)
        check_choice("schedule", self.schedule, TOKEN_SCHEDULES)
        check_number("cfg_scale", self.cfg_scale, 0, hint="0 turns guidance off")
        check_number("sm_temp", self.sm_temp, 0, low_open=True)
        check_number("r_temp", self.r_temp, 0)
        check_number("r_temp_end", self.r_temp_end, 0)
        check_seed("seed", self.seed)
        check_choice("confidence", self.confidence, CONFIDENCE_MODES)
        check_choice("autocast", self.autocast, tuple(AUTOCAST_DTYPES))


@dataclass
class StepInfo:
    """What the per-step callback sees, after the step's tokens were placed."""

    index: int
    steps: int
    is_full: bool
    codes: torch.Tensor  # [B, L]
    masked: torch.Tensor  # [B, L] after this step
    new_map: torch.Tensor  # [B, L] decoded at this step
    feature: torch.Tensor  # [R, T, D] the feature this step's logits came from
    mask_ratio: torch.Tensor  # [B] masked fraction before this step


@dataclass
class SampleResult:
    codes: torch.Tensor  # [B, L]
    full_steps: list[int]
    steps_run: int
    base_calls: int = 0
    shortcut_calls: int = 0
    base_seconds: float = 0.0
    shortcut_seconds: float = 0.0
    seconds: float = 0.0
    decode_order: Optional[torch.Tensor] = None  # [B, L] step at which each position was decoded

    @property
    def base_call_ms(self) -> float:
        return 1000 * self.base_seconds / self.base_calls if self.base_calls else 0.0

    @property
    def shortcut_call_ms(self) -> float:
        return 1000 * self.shortcut_seconds / self.shortcut_calls if self.shortcut_calls else 0.0


def _gumbel(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))


def meissonic_step(logits: torch.Tensor, temperature: float, rng: torch.Generator,
                   last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Meissonic's ``Scheduler.step`` (viiika/Meissonic src/scheduler.py:93-142) on guided logits [B, L, K]:
    (codes drawn for every position, their confidence). Draws with ``torch.multinomial`` from softmax(logits) over
    all B x L rows, then scores log p(drawn) (clamped at 1e-20) + ``temperature`` x Gumbel from one uniform per
    position, consuming ``rng`` exactly in that order, so a run replays the official tokens; the last step
    draws no noise. The sampler keeps the highest-scored masked positions, which is the official re-masking of
    the lowest ones."""
    probs = logits.softmax(dim=-1)
    sampled = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=rng).view(probs.shape[:-1])
    selected = probs.gather(-1, sampled[..., None])[..., 0]
    if last:
        return sampled, selected
    uniform = torch.zeros_like(selected).uniform_(0, 1, generator=rng)
    gumbel = -torch.log((-torch.log(uniform.clamp(1e-20))).clamp(1e-20))
    return sampled, torch.log(selected.clamp(1e-20)) + temperature * gumbel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sample(generator: MaskedGenerator, condition: Condition, settings: SamplerSettings,
           shortcut: Optional[ShortcutWeights] = None, batch_size: Optional[int] = None,
           callback: Optional[Callable[[StepInfo], None]] = None) -> SampleResult:
    """Generate image codes [B, L]. Without ``shortcut`` (or with budget = steps) this is the vanilla sampler.

    ``settings.method`` decides the non-full steps: the shortcut (default), ``reuse``, ``taylor1`` / ``taylor2``;
    ``fewer_steps`` runs the vanilla sampler with ``budget`` steps. Base calls are ``budget`` in every case."""
    settings.validate()
    if settings.method == "fewer_steps" and settings.resolved_budget() < settings.steps:
        settings = replace(settings, steps=settings.resolved_budget(), budget=None, full_steps=None,
                           full_step_rule="official")
    batch = batch_size or len(condition.labels if condition.labels is not None else condition.prompts or [])
    if batch < 1:
        raise ShortcutError("batch size must be >= 1: give at least one class label or prompt")
    check_sample_inputs(generator, condition, shortcut)
    steps = settings.steps
    full = set(settings.full_step_list(shortcut))
    predictor = make_predictor(settings.method, shortcut.network if shortcut is not None else None)
    if predictor is None and len(full) < steps:
        raise ShortcutError(f"budget {settings.resolved_budget()} < steps {steps} needs shortcut weights; "
                            "load them, pick a training-free method (reuse, taylor1, taylor2, fewer_steps), "
                            "or set budget = steps for the vanilla sampler")
    device = generator.device
    guidance = settings.cfg_scale != 0
    ctx = generator.prepare(condition, batch, guidance)
    counts = tokens_per_step(steps, generator.num_tokens, settings.schedule)
    rng = torch.Generator(device=device).manual_seed(int(settings.seed))
    amp_dtype = AUTOCAST_DTYPES[settings.autocast]
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    length = generator.num_tokens
    meissonic_temperatures = torch.linspace(settings.r_temp, settings.r_temp_end, steps).tolist()
    codes = torch.zeros(batch, length, dtype=torch.long, device=device)
    masked = torch.ones(batch, length, dtype=torch.bool, device=device)
    order = torch.full((batch, length), -1, dtype=torch.long, device=device)
    new_map = torch.zeros_like(masked)
    feature = None
    result = SampleResult(codes=codes, full_steps=sorted(full), steps_run=0)
    started = time.perf_counter()
    for index in range(steps):
        remaining = int(masked[0].sum())
        if remaining == 0:
            break
        count = min(max(counts[index], 0), remaining)
        mask_ratio = masked.float().mean(dim=1)
        ramp = index / (steps - 1) if steps > 1 else 0.0
        is_full = index in full or feature is None
        _sync(device)
        t0 = time.perf_counter()
        ctx.step, ctx.steps = index, steps
        with amp:
            if is_full:
                feature = generator.features(codes, masked, ctx)
                if predictor is not None:
                    predictor.observe(index, feature)
            else:
                new = generator.new_tokens(codes, new_map, ctx) if predictor.needs_new_tokens else None
                feature = predictor.predict(index, feature, new, mask_ratio.repeat(ctx.branches), ctx.padding)
        _sync(device)
        elapsed = time.perf_counter() - t0
        if is_full:
            result.base_calls += 1
            result.base_seconds += elapsed
        else:
            result.shortcut_calls += 1
            result.shortcut_seconds += elapsed
        with amp:
            logits = generator.head(feature, ctx, masked)
        logits = logits.float()
        if guidance:
            weight = settings.cfg_scale * (ramp if settings.cfg_ramp else 1.0)
            cond, uncond = logits[:batch], logits[batch:]
            if settings.confidence == "meissonic":  # the pipeline's u + g (c - u), g = 1 + w
                logits = uncond + (1 + weight) * (cond - uncond)
            else:
                logits = (1 + weight) * cond - weight * uncond
        scaled = logits * settings.sm_temp
        if settings.confidence == "meissonic":
            sampled, confidence = meissonic_step(scaled, meissonic_temperatures[index], rng, count == remaining)
        elif settings.confidence == "dimoo":
            sampled = (scaled + _gumbel(scaled.shape, rng, device)).argmax(dim=-1)
            log_prob = torch.log_softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]
            confidence = log_prob + settings.r_temp * _gumbel(log_prob.shape, rng, device)
        else:
            sampled = (scaled + _gumbel(scaled.shape, rng, device)).argmax(dim=-1)
            log_prob = torch.log_softmax(scaled, dim=-1).gather(-1, sampled[..., None])[..., 0]
            confidence = log_prob + settings.r_temp * (1 - ramp) * _gumbel(log_prob.shape, rng, device)
        confidence = confidence.masked_fill(~masked, float("-inf"))
        chosen = confidence.topk(count, dim=-1).indices
        new_map = torch.zeros_like(masked).scatter_(1, chosen, True)
        codes = torch.where(new_map, sampled, codes)
        masked = masked & ~new_map
        order = torch.where(new_map, torch.full_like(order, index), order)
        result.steps_run = index + 1
        if callback is not None:
            callback(StepInfo(index=index, steps=steps, is_full=is_full, codes=codes, masked=masked,
                              new_map=new_map, feature=feature, mask_ratio=mask_ratio))
    result.seconds = time.perf_counter() - started
    result.codes = codes
    result.decode_order = order
    return result


def with_overrides(settings: SamplerSettings, **overrides) -> SamplerSettings:
    """A copy with the given fields changed, ignoring None values (CLI and node widgets pass None for 'unset')."""
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
