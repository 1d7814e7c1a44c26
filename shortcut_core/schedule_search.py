"""Measure how far a shortcut drifts from the base model, to choose the full steps (``full_step_rule="searched"``).

On held-out recorded trajectories, the chain of shortcut calls started from the recorded feature of step i is run
with the recorded tokens (teacher forcing) up to every later step j; ``errors[i][j]`` is the mean squared error
against the recorded feature of step j over the positions still masked before j (what that step's logits decide).
``schedules.search_full_steps`` then picks the B full steps minimising the summed error of the other steps.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Optional, Sequence

import torch

from .fitting import BatchContexts, loss_weights, step_views
from .generator import MaskedGenerator, ShortcutError
from .recording import TrajectoryDataset

log = logging.getLogger(__name__)


@torch.no_grad()
def measure_step_errors(generator: MaskedGenerator, network: torch.nn.Module, dataset: TrajectoryDataset,
                        indices: Optional[Sequence[int]] = None, batch_size: int = 32) -> dict[int, torch.Tensor]:
    """Step-error tables [N, N] (float64, upper triangle filled) per recorded step count N."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    if not indices:
        raise ShortcutError(f"{dataset.folder}: no trajectories to measure the step errors on")
    guidance = float(dataset.index["settings"].get("cfg_scale", 1.0)) != 0
    contexts = BatchContexts(generator, guidance)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in indices:
        groups[tuple(dataset.shapes[i])].append(i)
    sums: dict[int, torch.Tensor] = {}
    weights: dict[int, torch.Tensor] = {}
    device = generator.device
    network.eval()
    for shape, members in groups.items():
        steps = shape[0]
        sums.setdefault(steps, torch.zeros(steps, steps, dtype=torch.float64))
        weights.setdefault(steps, torch.zeros(steps, steps, dtype=torch.float64))
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            items = [dataset.load(i) for i in chunk]
            features = torch.stack([item["features"] for item in items]).to(device)  # [R, S, T, D]
            order = torch.stack([item["order"].long() for item in items]).to(device)
            codes = torch.stack([item["codes"].long() for item in items]).to(device)
            batch = {"prev": features[:, 0].float(), "infos": [dataset.info(i) for i in chunk]}
            ctx = contexts(batch)
            rows = len(chunk)
            for first in range(steps - 1):
                feature = features[:, first].to(generator.dtype)
                for step in range(first, steps - 1):
                    step_index = torch.full((rows,), step, dtype=torch.long, device=device)
                    new_map, still_masked, mask_ratio = step_views(order, step_index)
                    new = generator.new_tokens(codes, new_map, ctx)
                    feature = network(feature, new, mask_ratio, ctx.padding)
                    target = features[:, step + 1].float()
                    position_weights = loss_weights(generator, ctx, "masked", still_masked, target.shape[1])
                    squared = (feature.float() - target).pow(2).mean(dim=-1)
                    sums[steps][first, step + 1] += float((squared * position_weights).sum())
                    weights[steps][first, step + 1] += float(position_weights.sum())
    dataset.close()
    tables = {}
    for steps in sums:
        table = sums[steps] / weights[steps].clamp(min=1)
        tables[steps] = table
        log.info("step errors for N=%d measured on %d trajectories", steps, sum(
            len(m) for s, m in groups.items() if s[0] == steps))
    return tables
