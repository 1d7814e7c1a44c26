"""Which steps run the base model, and how many tokens each step decodes.

The full-step rules reproduce the official MIGM-Shortcut code (``official``) and the paper's text
(``paper``); the token-count schedules reproduce the MaskGIT reference ``adap_sche``, ``dimoo_cosine``
the Lumina-DiMOO / DiMOO-Shortcut rule (a number of tokens kept masked after each step), and ``amused_cosine``
diffusers' ``AmusedScheduler`` (cosine masking schedule, at least one token decoded per step).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch

from .generator import ShortcutError

FULL_STEP_RULES = ("official", "paper")
SEARCHED = "searched"  # full steps chosen by ``search_full_steps`` from a measured step-error table
TOKEN_SCHEDULES = ("arccos", "cosine", "linear", "square", "root", "dimoo_cosine", "amused_cosine")


def check_steps_budget(steps: int, budget: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ShortcutError(f"steps must be a whole number >= 1, got {steps!r}")
    if not isinstance(budget, int) or not 1 <= budget <= steps:
        raise ShortcutError(f"budget must be between 1 and steps ({steps}), got {budget!r}")


def full_steps(steps: int, budget: int, rule: str = "official",
               explicit: Optional[Iterable[int]] = None) -> list[int]:
    """0-based indices of the steps that run the base model.

    ``official``: step 0, then t_k = max(t_{k-1} + 1, round(N k / B)) (Python round, half to even), as the
    released code does. ``paper``: the text's 1 + floor(j N / B), 1-based, i.e. floor(j N / B) 0-based.
    ``explicit``: a list given by the user (must contain step 0, be inside 0..N-1 and hold ``budget`` steps).
    """
    check_steps_budget(steps, budget)
    if explicit is not None:
        chosen = sorted(set(int(s) for s in explicit))
        if not chosen or chosen[0] != 0:
            raise ShortcutError(f"an explicit full-step list must contain step 0, got {list(explicit)}")
        if chosen[-1] >= steps:
            raise ShortcutError(f"full steps must lie in 0..{steps - 1}, got {chosen[-1]}")
        if len(chosen) != budget:
            raise ShortcutError(f"the full-step list has {len(chosen)} distinct steps but budget is {budget}")
        return chosen
    if rule == "official":
        chosen = [0]
        for k in range(1, budget):
            chosen.append(max(chosen[-1] + 1, round(steps * k / budget)))
        return chosen
    if rule == "paper":
        return [(j * steps) // budget for j in range(budget)]
    raise ShortcutError(f"full-step rule must be one of {', '.join(FULL_STEP_RULES)} or an explicit list, got {rule!r}")


def schedule_error(errors, full: Sequence[int]) -> float:
    """Summed error of the non-full steps when each chains from the last full step before it.

    ``errors[i][j]`` (j > i) is the measured error of the predicted feature at step j when step i was the last
    full one (a chain of j - i shortcut calls); full steps cost nothing."""
    chosen = sorted(set(int(s) for s in full))
    total, last = 0.0, None
    for j in range(len(errors)):
        if j in chosen:
            last = j
        else:
            total += float(errors[last][j])
    return total


def search_full_steps(errors, budget: int) -> list[int]:
    """The ``budget`` full steps (step 0 always among them) with the least ``schedule_error`` (exact, by dynamic
    programming over the position of the next full step: O(N^2 B))."""
    steps = len(errors)
    check_steps_budget(steps, budget)
    table = [[float(errors[i][j]) if j > i else 0.0 for j in range(steps)] for i in range(steps)]
    # segment[i][k]: error of steps i+1 .. k-1 chained from full step i (k = steps: to the end)
    segment = [[0.0] * (steps + 1) for _ in range(steps)]
    for i in range(steps):
        for k in range(i + 2, steps + 1):
            segment[i][k] = segment[i][k - 1] + table[i][k - 1]
    inf = float("inf")
    # best[b][i]: least error from step i on, with i full and b more full steps to place after it
    best = [[inf] * steps for _ in range(budget)]
    choice = [[-1] * steps for _ in range(budget)]
    for i in range(steps):
        best[0][i] = segment[i][steps]
    for b in range(1, budget):
        for i in range(steps):
            for k in range(i + 1, steps - b + 1):
                cost = segment[i][k] + best[b - 1][k]
                if cost < best[b][i]:
                    best[b][i], choice[b][i] = cost, k
    chosen, i = [0], 0
    for b in range(budget - 1, 0, -1):
        i = choice[b][i]
        chosen.append(i)
    return chosen


def searched_full_steps(steps: int, budget: int, tables: Optional[dict]) -> list[int]:
    """``search_full_steps`` on the table measured for ``steps`` (tables: steps -> [N, N] errors)."""
    check_steps_budget(steps, budget)
    if not tables:
        raise ShortcutError("full_step_rule 'searched' needs shortcut weights that carry a measured step-error "
                            "table (train/search_schedule.py adds one); these have none: use 'official'")
    if steps not in tables:
        raise ShortcutError(f"the shortcut's step-error table was measured for steps {sorted(tables)}, not "
                            f"{steps}: pick one of those step counts or use full_step_rule 'official'")
    return search_full_steps(tables[steps], budget)


def tokens_per_step(steps: int, num_tokens: int, schedule: str = "arccos") -> list[int]:
    """How many tokens each step unmasks (MaskGIT ``adap_sche``): always at least one, summing to L.

    The last entry absorbs rounding and can be 0 (or less, which the sampler treats as 0) for tiny grids.
    """
    if schedule not in TOKEN_SCHEDULES:
        raise ShortcutError(f"schedule must be one of {', '.join(TOKEN_SCHEDULES)}, got {schedule!r}")
    if schedule == "dimoo_cosine":
        return dimoo_cosine_counts(steps, num_tokens)
    if schedule == "amused_cosine":
        return amused_cosine_counts(steps, num_tokens)
    if steps == 1:  # every curve is 0 at its only point: one step decodes everything
        return [num_tokens]
    r = torch.linspace(1, 0, steps, dtype=torch.float32)
    if schedule == "root":
        val = 1 - r ** 0.5
    elif schedule == "linear":
        val = 1 - r
    elif schedule == "square":
        val = 1 - r ** 2
    elif schedule == "cosine":
        val = torch.cos(r * math.pi * 0.5)
    else:
        val = torch.arccos(r) / (math.pi * 0.5)
    sched = (val / val.sum()) * num_tokens
    sched = sched.round()
    sched[sched == 0] = 1
    sched[-1] += num_tokens - sched.sum()
    return [int(v) for v in sched.tolist()]


def dimoo_cosine_counts(steps: int, num_tokens: int) -> list[int]:
    """Lumina-DiMOO's rule: after step s (0-based) keep ``floor(L cos(pi/2 (s+1)/N))`` tokens masked (at least 1),
    none after the last step; each step unmasks the difference. Computed in float32 like the reference loop.
    """
    keep = []
    length = torch.tensor([float(num_tokens)], dtype=torch.float32)
    for step in range(steps):
        if step < steps - 1:
            frac = torch.cos(0.5 * math.pi * torch.tensor([(step + 1) / steps], dtype=torch.float32))
            keep.append(int((length * frac).floor().clamp_min(1).item()))
        else:
            keep.append(0)
    before = [num_tokens] + keep[:-1]
    return [max(b - k, 0) for b, k in zip(before, keep)]


def amused_cosine_counts(steps: int, num_tokens: int) -> list[int]:
    """diffusers ``AmusedScheduler.step`` (masking_schedule "cosine", starting_mask_ratio 1): after step s (0-based)
    keep ``floor(L cos(pi/2 (s+1)/N))`` tokens masked, but at most one less than were masked before the step and at
    least 1; none after the last step. Same float32 arithmetic as the scheduler (integer tensor division, then cos).
    """
    counts = []
    remaining = num_tokens
    for step in range(steps):
        if step < steps - 1:
            ratio = torch.tensor([step + 1]) / steps
            keep = int((num_tokens * torch.cos(ratio * math.pi / 2)).floor().item())
            keep = max(1, min(remaining - 1, keep))
        else:
            keep = 0
        count = max(remaining - keep, 0)
        counts.append(count)
        remaining -= count
    return counts


def mask_ratios(counts: Sequence[int], num_tokens: int) -> list[float]:
    """Masked fraction at the start of every step for a token-count schedule (the shortcut's time input)."""
    remaining = num_tokens
    ratios = []
    for count in counts:
        ratios.append(remaining / num_tokens)
        remaining = max(remaining - max(count, 0), 0)
    return ratios
