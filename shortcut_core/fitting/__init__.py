"""Fitting shortcut weights on recorded (or freshly sampled) trajectories with the paper's objective.

One module per concern: ``settings`` (what a fit is given), ``data`` (the (trajectory, step) pairs and their
batches), ``objective`` (the loss and the held-out figures), ``distributed`` (data parallel ranks and the one
collective per step), ``loop`` (the training loop and its checkpoints). This module holds the two entry points:
``fit_shortcut`` on a recorded dataset and ``fit_shortcut_online`` on trajectories the base sampler produces while
training. Both return the fitted ``ShortcutWeights`` (EMA network, training report, the per-call ratio measured
here) and the report.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from ..generator import Condition, MaskedGenerator, ShortcutError
from ..recording import ConditionSchedule, TrajectoryDataset, recorded_condition
from ..sampler import SamplerSettings
from ..shortcut import ShortcutConfig
from ..weights import ShortcutWeights, measure_per_call_ratio
from .data import OnlineSamples, StepSamples, TrajectorySamples, _DatasetStore, open_samples, step_views
from .distributed import DistInfo, init_distributed
from .loop import load_checkpoint, save_checkpoint, train
from .objective import BatchContexts, evaluate, loss_weights
from .settings import FIT_LIMITS, ONLINE_VAL_OFFSET, FitSettings, OnlineSettings, RunOptions

log = logging.getLogger(__name__)

__all__ = ["FitSettings", "FIT_LIMITS", "OnlineSettings", "RunOptions", "DistInfo", "init_distributed", "fit_shortcut",
           "fit_shortcut_online", "BatchContexts", "evaluate", "loss_weights", "step_views", "StepSamples",
           "TrajectorySamples", "OnlineSamples", "_DatasetStore", "load_checkpoint", "save_checkpoint"]


def fit_shortcut(generator: MaskedGenerator, dataset: TrajectoryDataset, config: ShortcutConfig,
                 settings: FitSettings, log_path: Optional[Path] = None, run: Optional[RunOptions] = None,
                 dist: Optional[DistInfo] = None) -> tuple[ShortcutWeights, dict]:
    """Train a shortcut on ``dataset``; returns the weights (EMA) and a report with validation figures."""
    settings.validate()
    run = run or RunOptions()
    dist = dist or DistInfo()
    _check_generator(generator, dataset.index["generator"], str(dataset.folder), config)
    torch.manual_seed(settings.seed)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(settings.seed)).tolist()
    n_val = max(1, int(round(len(order) * settings.val_fraction)))
    if len(order) - n_val < 1:
        raise ShortcutError(f"need at least 2 trajectories to hold some out, found {len(order)}")
    train_ids, val_ids = sorted(order[n_val:]), sorted(order[:n_val])
    first = dataset.info(0)
    train_samples, val_samples, mode = open_samples(generator, dataset, train_ids, val_ids, settings.rollout, run,
                                                    dist)
    if dist.main:
        log.info("data: %d train / %d val trajectories, %d train pairs, %s (%s)", len(train_ids), len(val_ids),
                 len(train_samples), mode, dataset.folder)
    guidance = float(dataset.index["settings"].get("cfg_scale", 1.0)) != 0
    fingerprint = _fingerprint({"shards": [(s["file"], s["bytes"]) for s in dataset.index["shards"]
                                           if s["file"] not in {b for b, _ in dataset.bad_shards}],
                                "n": len(dataset), "val": val_ids, "generator": generator.identity})
    extra = {"train_trajectories": len(train_ids), "val_trajectories": n_val, "train_pairs": len(train_samples),
             "val_pairs": len(val_samples), "data_mode": mode, "skipped_shards": [b for b, _ in dataset.bad_shards]}
    network, report = train(generator, config, settings, train_samples, val_samples,
                            BatchContexts(generator, guidance), run, dist, log_path, fingerprint, extra)
    return _weights(generator, network, report, recorded_condition(first), guidance), report


def fit_shortcut_online(generator: MaskedGenerator, conditions: ConditionSchedule, sampler_settings: SamplerSettings,
                        config: ShortcutConfig, settings: FitSettings, online: Optional[OnlineSettings] = None,
                        log_path: Optional[Path] = None, run: Optional[RunOptions] = None,
                        dist: Optional[DistInfo] = None) -> tuple[ShortcutWeights, dict]:
    """Train a shortcut on trajectories the base sampler produces while training (nothing is stored).

    ``conditions`` gives the condition of sampler run i (its seed is ``sampler_settings.seed + i``); the held-out
    runs are ``ONLINE_VAL_OFFSET + v`` for v < ``online.val_batches`` (split over ranks)."""
    settings.validate()
    online = online or OnlineSettings()
    online.validate()
    run = run or RunOptions()
    dist = dist or DistInfo()
    _check_generator(generator, generator.describe(), "online", config)
    if conditions.batch != online.batch:
        raise ShortcutError(f"the condition schedule makes batches of {conditions.batch}, online.batch is {online.batch}")
    device = generator.device
    val_runs = [v for v in range(online.val_batches) if v % dist.world == dist.rank]
    val = OnlineSamples(generator, conditions, sampler_settings, online, device, 1, dist,
                        offset=ONLINE_VAL_OFFSET, fixed_runs=[(v - dist.rank) // dist.world for v in val_runs])
    train_samples = OnlineSamples(generator, conditions, sampler_settings, online, device, settings.rollout, dist)
    guidance = sampler_settings.cfg_scale != 0
    fingerprint = _fingerprint({"online": asdict(online), "sampler": asdict(sampler_settings),
                                "generator": generator.identity, "world": dist.world,
                                "conditions": [asdict(conditions[i]) for i in range(min(4, online.buffer))]})
    extra = {"online": asdict(online), "sampler_settings": asdict(sampler_settings), "val_pairs": len(val)}
    network, report = train(generator, config, settings, train_samples, val, BatchContexts(generator, guidance), run,
                            dist, log_path, fingerprint, extra, online=True)
    report["sampler_runs"] = train_samples.generated + val.generated
    report["train_trajectories"] = None
    report["val_trajectories"] = len(val.store)
    first = conditions[0]
    one = Condition(labels=first.labels[:1] if first.labels is not None else None,
                    prompts=first.prompts[:1] if first.prompts is not None else None,
                    negative_prompts=first.negative_prompts[:1] if first.negative_prompts else None)
    return _weights(generator, network, report, one, guidance), report


def _weights(generator: MaskedGenerator, network: torch.nn.Module, report: dict, condition: Condition,
             guidance: bool) -> ShortcutWeights:
    """The fitted weights, with the per-call ratio measured here on one image of the fitted condition."""
    ratio = measure_per_call_ratio(generator, network, condition, guidance)
    report["per_call_ratio"] = round(ratio, 5)
    return ShortcutWeights(network, generator_info=generator.describe(), training=report, per_call_ratio=ratio)


def _check_generator(generator: MaskedGenerator, recorded: dict, where: str, config: ShortcutConfig) -> None:
    if recorded.get("generator") != generator.identity:
        raise ShortcutError(f"{where} holds trajectories of {recorded.get('generator')!r}, "
                            f"not of generator {generator.identity!r}")
    if config.feature_dim != generator.feature_dim:
        raise ShortcutError(f"shortcut feature_dim {config.feature_dim} != generator feature size {generator.feature_dim}")
    size = recorded.get("image_size")
    if size and generator.image_size is not None and list(generator.image_size) != list(size):
        generator.set_image_size(*size)
    if recorded.get("grid") and list(recorded["grid"]) != list(generator.grid_size):
        raise ShortcutError(f"{where} was recorded on a {recorded['grid']} token grid, the generator has "
                            f"{list(generator.grid_size)}")


def _fingerprint(parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
