"""Fitting shortcut weights on recorded trajectories (the paper's objective).

A sample is (feature at step s, tokens decoded at step s, masked fraction after step s) -> feature at step
s + 1. Loss: MSE on the next feature over the image positions still masked after step s (the official
MaskGIT choice) or over every position. AdamW, learning rate x0.1 after ``lr_drop_step`` steps, gradient
clipping, and an EMA of the weights, which is what gets exported.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from .generator import Context, MaskedGenerator, ShortcutError
from .recording import TrajectoryDataset
from .shortcut import ShortcutConfig, build_shortcut

log = logging.getLogger(__name__)


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

    def validate(self) -> None:
        if self.loss_positions not in ("masked", "all"):
            raise ShortcutError(f"loss_positions must be 'masked' or 'all', got {self.loss_positions!r}")
        if not 0 < self.val_fraction < 1:
            raise ShortcutError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.steps < 1 or self.batch_size < 1:
            raise ShortcutError("steps and batch_size must be >= 1")


class StepSamples:
    """All (trajectory, step) pairs of some trajectories, held in memory for fast random batches."""

    def __init__(self, dataset: TrajectoryDataset, indices: list[int], device: torch.device):
        loaded = [dataset.load(i) for i in indices]
        if not loaded:
            raise ShortcutError("no trajectories to fit on: record some first")
        self.features = torch.stack([t["features"] for t in loaded]).to(device)  # [N, S, T, D]
        self.order = torch.stack([t["order"] for t in loaded]).long().to(device)  # [N, L]
        self.codes = torch.stack([t["codes"] for t in loaded]).long().to(device)  # [N, L]
        steps = self.features.shape[1]
        self.pairs = torch.tensor([(n, s) for n in range(len(loaded)) for s in range(steps - 1)], device=device)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, which: torch.Tensor) -> dict[str, torch.Tensor]:
        traj, step = self.pairs[which, 0], self.pairs[which, 1]
        order = self.order[traj]
        still_masked = (order > step[:, None]) | (order < 0)
        return {"prev": self.features[traj, step].float(), "target": self.features[traj, step + 1].float(),
                "codes": self.codes[traj], "new_map": order == step[:, None], "still_masked": still_masked,
                "mask_ratio": still_masked.float().mean(dim=1)}


def _loss_weights(generator: MaskedGenerator, batch: dict, ctx: Context, positions: str, length: int) -> torch.Tensor:
    """[R, T] weights of the feature positions the loss covers."""
    rows = batch["prev"].shape[0]
    if positions == "all":
        return torch.ones(rows, length, device=ctx.device)
    weights = torch.zeros(rows, length, device=ctx.device)
    weights[:, generator.image_positions(ctx)] = batch["still_masked"].float()
    return weights


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_position = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_position * weights).sum() / weights.sum().clamp(min=1)


@torch.no_grad()
def evaluate(generator: MaskedGenerator, network: torch.nn.Module, samples: StepSamples, batch_size: int = 64,
             limit: Optional[int] = None) -> dict:
    """Held-out MSE and token agreement (head argmax of predicted vs recorded feature on still-masked
    positions), for the shortcut and for the 'reuse the last feature' baseline."""
    network.eval()
    totals = {"mse": 0.0, "baseline_mse": 0.0, "agreement": 0.0, "baseline_agreement": 0.0}
    weight_sum = 0.0
    count = len(samples) if limit is None else min(limit, len(samples))
    for start in range(0, count, batch_size):
        which = torch.arange(start, min(start + batch_size, count), device=samples.features.device)
        batch = samples.batch(which)
        ctx = Context(batch_size=len(which), branches=1, device=batch["prev"].device)
        new = generator.new_tokens(batch["codes"], batch["new_map"], ctx)
        pred = network(batch["prev"], new, batch["mask_ratio"])
        weights = _loss_weights(generator, batch, ctx, "masked", batch["prev"].shape[1])
        n = float(weights.sum())
        totals["mse"] += float(_masked_mse(pred, batch["target"], weights)) * n
        totals["baseline_mse"] += float(_masked_mse(batch["prev"], batch["target"], weights)) * n
        target_tokens = generator.head(batch["target"], ctx, batch["still_masked"]).argmax(-1)
        for key, feature in (("agreement", pred), ("baseline_agreement", batch["prev"])):
            agree = (generator.head(feature, ctx, batch["still_masked"]).argmax(-1) == target_tokens).float()
            totals[key] += float((agree * batch["still_masked"]).sum())
        weight_sum += n
    network.train()
    return {key: value / max(weight_sum, 1) for key, value in totals.items()}


def fit_shortcut(generator: MaskedGenerator, dataset: TrajectoryDataset, config: ShortcutConfig,
                 settings: FitSettings, log_path: Optional[Path] = None) -> tuple[torch.nn.Module, dict]:
    """Train a shortcut on ``dataset``; returns the EMA network and a report with validation figures."""
    settings.validate()
    if dataset.index["generator"].get("generator") != generator.identity:
        raise ShortcutError(f"{dataset.folder} holds trajectories of {dataset.index['generator'].get('generator')!r}, "
                            f"not of generator {generator.identity!r}")
    if config.feature_dim != generator.feature_dim:
        raise ShortcutError(f"shortcut feature_dim {config.feature_dim} != generator feature size {generator.feature_dim}")
    device = generator.device
    torch.manual_seed(settings.seed)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(settings.seed)).tolist()
    n_val = max(1, int(round(len(order) * settings.val_fraction)))
    if len(order) - n_val < 1:
        raise ShortcutError(f"need at least 2 trajectories to hold some out, found {len(order)}")
    train = StepSamples(dataset, sorted(order[n_val:]), device)
    val = StepSamples(dataset, sorted(order[:n_val]), device)
    network = build_shortcut(config).to(device)
    network.train()
    ema = copy.deepcopy(network).eval().requires_grad_(False)
    opt = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rng = torch.Generator(device=device).manual_seed(settings.seed)
    log_file = open(log_path, "a") if log_path else None
    started = time.time()
    bar = tqdm(range(settings.steps), desc="fit shortcut", unit="step")
    history = []
    for step in bar:
        lr = settings.lr * (0.1 if step >= settings.lr_drop_step else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        which = torch.randint(0, len(train), (settings.batch_size,), generator=rng, device=device)
        batch = train.batch(which)
        ctx = Context(batch_size=settings.batch_size, branches=1, device=device)
        with torch.no_grad():
            new = generator.new_tokens(batch["codes"], batch["new_map"], ctx)
        pred = network(batch["prev"], new, batch["mask_ratio"])
        weights = _loss_weights(generator, batch, ctx, settings.loss_positions, batch["prev"].shape[1])
        loss = _masked_mse(pred, batch["target"], weights)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise ShortcutError(f"training diverged at step {step} (loss {loss_value}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), settings.grad_clip)
        opt.step()
        decay = min(settings.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), network.parameters()):
                e.lerp_(p, 1 - decay)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            metrics = evaluate(generator, ema, val, limit=2048)
            record = {"step": step + 1, "train_loss": loss_value, "lr": lr, "seconds": round(time.time() - started, 1),
                      **{f"val_{k}": v for k, v in metrics.items()}}
            history.append(record)
            log.info("step %d: %s", step + 1, record)
            if log_file:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
    if log_file:
        log_file.close()
    final = history[-1]
    report = {"settings": asdict(settings), "train_trajectories": len(order) - n_val, "val_trajectories": n_val,
              "train_pairs": len(train), "val_pairs": len(val), "seconds": round(time.time() - started, 1),
              "val_mse": final["val_mse"], "val_baseline_mse": final["val_baseline_mse"],
              "val_agreement": final["val_agreement"], "val_baseline_agreement": final["val_baseline_agreement"]}
    return ema, report
