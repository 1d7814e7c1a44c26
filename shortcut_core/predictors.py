"""What runs on a step that skips the base model: the learned shortcut, or a training-free baseline.

Every method sees the same thing (the full steps' features as they happen, then a request for step ``index``),
so the sampler, the CLI, the ComfyUI node and the benchmark compare them on equal terms:

* ``shortcut``: the fitted network, ``f = S(previous feature, tokens just decoded, mask ratio)``, chained.
* ``reuse``: the last full step's feature as it is (a shortcut that returns its input).
* ``taylor1`` / ``taylor2``: TaylorSeer-style extrapolation of the feature in the step index: a Taylor expansion
  whose derivatives come from divided differences of the last 2 / 3 full steps (the Newton polynomial through
  them, evaluated at ``index``). With fewer full steps seen so far the order drops to what they support.
* ``fewer_steps`` is not a predictor: the sampler runs the vanilla sampler with ``budget`` steps instead.
"""
from __future__ import annotations

from typing import Optional

import torch

from .generator import NewTokens, ShortcutError

METHODS = ("shortcut", "fewer_steps", "reuse", "taylor1", "taylor2")
METHOD_HELP = {
    "shortcut": "the fitted shortcut network on the non-full steps (the MIGM-Shortcut method)",
    "fewer_steps": "vanilla sampling with only `budget` steps (every step runs the base model)",
    "reuse": "reuse the last full step's feature on the non-full steps (training-free baseline)",
    "taylor1": "TaylorSeer-style 1st-order extrapolation of the feature from the last 2 full steps",
    "taylor2": "TaylorSeer-style 2nd-order extrapolation of the feature from the last 3 full steps",
}


class FeaturePredictor:
    """The base model's feature at a step that does not run it. ``observe`` gets every full step's feature."""

    needs_new_tokens = False

    def observe(self, index: int, feature: torch.Tensor) -> None:
        pass

    def predict(self, index: int, feature: torch.Tensor, new: Optional[NewTokens], mask_ratio: torch.Tensor,
                padding: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class ShortcutPredictor(FeaturePredictor):
    needs_new_tokens = True

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def predict(self, index, feature, new, mask_ratio, padding):
        return self.network(feature, new, mask_ratio, padding)


class FeatureReuse(FeaturePredictor):
    def __init__(self):
        self.last: Optional[torch.Tensor] = None

    def observe(self, index, feature):
        self.last = feature

    def predict(self, index, feature, new, mask_ratio, padding):
        return self.last


class TaylorExtrapolation(FeaturePredictor):
    """Newton's divided-difference polynomial through the last ``order + 1`` full steps, at step ``index``.

    For equally spaced full steps this is TaylorSeer's finite-difference Taylor series; with the uneven spacing
    of the full-step rules it stays exact for features that are polynomials of that order in the step index.
    """

    def __init__(self, order: int):
        if order not in (1, 2):
            raise ShortcutError(f"TaylorSeer order must be 1 or 2, got {order}")
        self.order = order
        self.history: list[tuple[int, torch.Tensor]] = []

    def observe(self, index, feature):
        self.history = (self.history + [(index, feature)])[-(self.order + 1):]

    def predict(self, index, feature, new, mask_ratio, padding):
        steps = [float(s) for s, _ in self.history]
        coefficients = [f.float() for _, f in self.history]  # becomes the divided-difference table in place
        for level in range(1, len(steps)):
            for i in range(len(steps) - 1, level - 1, -1):
                coefficients[i] = (coefficients[i] - coefficients[i - 1]) / (steps[i] - steps[i - level])
        result, basis = coefficients[0], 1.0
        for i in range(1, len(steps)):
            basis = basis * (index - steps[i - 1])
            result = result + basis * coefficients[i]
        return result.to(self.history[-1][1].dtype)


def make_predictor(method: str, shortcut: Optional[torch.nn.Module]) -> Optional[FeaturePredictor]:
    """The predictor for ``method`` (None for ``fewer_steps``, which never predicts)."""
    if method == "shortcut":
        return ShortcutPredictor(shortcut) if shortcut is not None else None
    if method == "reuse":
        return FeatureReuse()
    if method in ("taylor1", "taylor2"):
        return TaylorExtrapolation(int(method[-1]))
    if method == "fewer_steps":
        return None
    raise ShortcutError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
