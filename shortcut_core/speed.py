"""What skipping the base model buys: the expected speedup before a run, and the vanilla time a finished run
stands for. Used by the nodes (the schedule strip, the run report); the web extension keeps a JS twin of
``expected_speedup`` that its tests check against the same figures."""
from __future__ import annotations

from typing import Optional

from .sampler import SampleResult


def expected_speedup(steps: int, budget: int, cost_ratio: Optional[float], method: str = "shortcut") -> Optional[float]:
    """N / (B + (N - B) c) for B full steps of N when a predicted step costs c base calls; N / B for
    ``fewer_steps``. None when c is unknown (nothing measured yet) and the method predicts steps."""
    if method == "fewer_steps" or budget >= steps:
        return steps / budget
    if cost_ratio is None:
        return None
    return steps / (budget + (steps - budget) * cost_ratio)


def measured_cost_ratio(result: SampleResult) -> Optional[float]:
    """A predicted step's call time over a base call's, as this run measured them (None without both)."""
    if result.shortcut_calls and result.base_calls and result.base_call_ms > 0:
        return result.shortcut_call_ms / result.base_call_ms
    return None


def vanilla_seconds(result: SampleResult, steps: int, method: str = "shortcut") -> float:
    """The time the vanilla sampler with all ``steps`` steps would have taken for this run, estimated from it.

    A predicted step would have been a base call: the run's time plus, per predicted step, a base call less a
    predicted one (the head, CFG and token choice cost the same on every step). ``fewer_steps`` ran fewer steps of
    every kind, so its time scales with the step count.
    """
    if method == "fewer_steps" and 0 < result.steps_run < steps:
        return result.seconds * steps / result.steps_run
    saved_ms = result.shortcut_calls * (result.base_call_ms - result.shortcut_call_ms)
    return result.seconds + saved_ms / 1000
