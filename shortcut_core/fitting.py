"""Fitting shortcut weights on recorded (or freshly sampled) trajectories: the paper's objective.

A sample is (feature at step s, tokens decoded at step s, masked fraction after step s) -> feature at step
s + 1. Loss: MSE on the next feature over the image positions still masked after step s (the official
MaskGIT choice) or over every position (official DiMOO choice), optionally plus a KL term between the head's
softmaxes of predicted and recorded features (temperature T, weighted T^2 as in distillation) and a
teacher-forced multi-step rollout (the prediction is fed back ``rollout`` times with the recorded tokens).
AdamW, learning rate x0.1 after ``lr_drop_step`` steps, gradient clipping, and an EMA of the weights, which is
what gets exported.

Scale:

* Data: small datasets are loaded into memory (``StepSamples``), large ones are read from the memory-mapped shards
  (``TrajectorySamples``), chosen from the free RAM; both give the same batches. Rows with different numbers
  of new tokens or different sequence lengths are padded and masked (no per-sample loop in the model).
* Data parallel: under ``torchrun`` every rank draws the same global batch of (trajectory, step) pairs and takes
  its slice ``rank::world``; the loss is normalised by the global number of loss positions, so K processes
  compute the same gradient as one process over the same global batch (DistributedDataParallel; gloo on CPU,
  nccl on GPU).
* Checkpoints (model, EMA, optimizer, grad scaler, RNG states, step, history) are written atomically; a resumed
  run continues exactly where the checkpoint was taken.
* Online mode (``fit_shortcut_online``): the base sampler produces trajectories while training; a rolling buffer
  of the most recent batches is all that is kept.
"""
from __future__ import annotations

import bisect
import contextlib
import copy
import datetime
import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .generator import Condition, Context, MaskedGenerator, ShortcutError
from .recording import ConditionSchedule, TrajectoryDataset, TrajectoryRecorder
from .sampler import SamplerSettings, sample
from .shortcut import ShortcutConfig, build_shortcut
from .validation import available_ram, check_choice, check_number
from .weights import atomic_write

log = logging.getLogger(__name__)

AMP_MODES = ("auto", "none", "bf16", "fp16")
CHECKPOINT_FORMAT = "migm-shortcut-checkpoint"
ROW_CONTEXT_ARCHS = ("dimoo",)  # backends whose head/new_tokens need the per-row Context of the recording
ONLINE_VAL_OFFSET = 1_000_000  # online validation batches use condition/seed indices from here on


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


# ------------------------------------------------------------------------------------------------------------
# distributed


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (torchrun) and start the process group: nccl on CUDA, gloo on CPU.
    Returns the rank info and the device this rank uses (cuda:LOCAL_RANK when CUDA is chosen)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    info = DistInfo(rank=rank, world=world, local_rank=local)
    if world > 1:
        import torch.distributed as dist
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(minutes=60))
    return info, dev


def _all_reduce(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        import torch.distributed as dist
        dist.all_reduce(tensor)
    return tensor


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist
        dist.barrier()


# ------------------------------------------------------------------------------------------------------------
# samples


def step_views(order: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens decoded at ``step`` [B, L], still masked after it [B, L], masked fraction after it [B])."""
    still_masked = (order > step[:, None]) | (order < 0)
    return order == step[:, None], still_masked, still_masked.float().mean(dim=1)


class StepSamples:
    """All (trajectory, step) pairs of some trajectories, held in memory for fast random batches.

    Needs trajectories of one sequence length; ``storage_device`` (default ``device``) is where the features
    stay, batches come out on ``device``."""

    def __init__(self, dataset: TrajectoryDataset, indices: list[int], device: torch.device, rollout: int = 1,
                 storage_device: Optional[torch.device] = None):
        if not indices:
            raise ShortcutError("no trajectories to fit on: record some first")
        self.device = torch.device(device)
        store = torch.device(storage_device) if storage_device is not None else self.device
        self.rollout = rollout
        features = order = codes = None
        for n, i in enumerate(indices):  # filled in place: peak memory = the data, not twice the data
            item = dataset.load(i)
            if features is None:
                features = torch.empty((len(indices), *item["features"].shape), dtype=item["features"].dtype,
                                       device=store)
                order = torch.empty((len(indices), *item["order"].shape), dtype=torch.long, device=store)
                codes = torch.empty((len(indices), *item["codes"].shape), dtype=torch.long, device=store)
            if item["features"].shape != features.shape[1:]:
                raise ShortcutError("trajectories of different shapes cannot be stacked in memory; use the "
                                    "memory-mapped reader (--data-in-memory no)")
            features[n] = item["features"]
            order[n] = item["order"].long()
            codes[n] = item["codes"].long()
        self.names = [dataset.describe(i) for i in indices]
        dataset.close()  # unmap the shards: their pages would otherwise count twice in RSS
        self.features, self.order, self.codes = features, order, codes  # [N, S, T, D], [N, L], [N, L]
        steps = self.features.shape[1]
        self.pairs = torch.tensor([(n, s) for n in range(len(indices)) for s in range(steps - rollout)],
                                  dtype=torch.long, device=store).view(-1, 2)

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, p: int) -> str:
        n, s = self.pairs[p].tolist()
        return f"{self.names[n]}, step {s}"

    def batch(self, which: torch.Tensor) -> dict[str, torch.Tensor]:
        which = which.to(self.pairs.device)
        traj, step = self.pairs[which, 0], self.pairs[which, 1]
        order = self.order[traj]
        new_map, still_masked, mask_ratio = step_views(order, step)
        dev = self.device
        out = {"prev": self.features[traj, step].to(dev).float(), "target": self.features[traj, step + 1].to(dev).float(),
               "codes": self.codes[traj].to(dev), "order": order.to(dev), "step": step.to(dev),
               "new_map": new_map.to(dev), "still_masked": still_masked.to(dev), "mask_ratio": mask_ratio.to(dev),
               "pairs": which.cpu()}
        if self.rollout > 1:
            out["targets"] = torch.stack([self.features[traj, step + k] for k in range(1, self.rollout + 1)],
                                         dim=1).to(dev).float()
        return out


class _DatasetStore:
    """Trajectories ``indices`` of a TrajectoryDataset, read through its memory maps."""

    def __init__(self, dataset: TrajectoryDataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def steps(self, n: int) -> int:
        return self.dataset.shapes[self.indices[n]][0]

    def window(self, n: int, start: int, count: int) -> torch.Tensor:
        return self.dataset.window(self.indices[n], start, count)

    def tokens(self, n: int):
        return self.dataset.tokens(self.indices[n])

    def info(self, n: int) -> dict:
        return self.dataset.info(self.indices[n])

    def describe(self, n: int) -> str:
        return self.dataset.describe(self.indices[n])


class _MemoryStore:
    """Trajectories held in memory: a list of dicts with features [S, T, D], order [L], codes [L], info."""

    def __init__(self, items: Optional[list] = None):
        self.items = list(items or [])

    def __len__(self) -> int:
        return len(self.items)

    def steps(self, n: int) -> int:
        return self.items[n]["features"].shape[0]

    def window(self, n: int, start: int, count: int) -> torch.Tensor:
        return self.items[n]["features"][start:start + count]

    def tokens(self, n: int):
        return self.items[n]["order"], self.items[n]["codes"]

    def info(self, n: int) -> dict:
        return self.items[n]["info"]

    def describe(self, n: int) -> str:
        info = self.items[n]["info"]
        return self.items[n].get("where") or (f"sampler run {info.get('batch_index')} image {info.get('image')} "
                                              f"branch {info.get('branch')}")

    @classmethod
    def preload(cls, dataset: TrajectoryDataset, indices: Sequence[int]) -> "_MemoryStore":
        items = []
        for i in indices:
            item = dataset.load(i)
            items.append({"features": item["features"], "order": item["order"], "codes": item["codes"],
                          "info": dataset.info(i), "where": dataset.describe(i)})
        dataset.close()
        return cls(items)


class TrajectorySamples:
    """(trajectory, step) pairs over a store of trajectories that may differ in sequence length (padded and
    masked per batch). Pair p = (n, s) with n-major order, as ``StepSamples``. Each batch reads only the
    ``rollout + 1`` steps it needs from each trajectory."""

    def __init__(self, store, device: torch.device, rollout: int = 1):
        self.store, self.device, self.rollout = store, torch.device(device), rollout
        self.reindex()

    def reindex(self) -> None:
        offsets = [0]
        for n in range(len(self.store)):
            offsets.append(offsets[-1] + max(self.store.steps(n) - self.rollout, 0))
        self.offsets = offsets

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, p: int) -> tuple[int, int]:
        n = bisect.bisect_right(self.offsets, p) - 1
        return n, p - self.offsets[n]

    def describe(self, p: int) -> str:
        n, s = self.locate(p)
        return f"{self.store.describe(n)}, step {s}"

    def batch(self, which: torch.Tensor) -> dict:
        k = self.rollout
        feats, orders, codes, steps, infos = [], [], [], [], []
        for p in which.tolist():
            n, s = self.locate(int(p))
            feats.append(self.store.window(n, s, k + 1))
            order, code = self.store.tokens(n)
            orders.append(order.long())
            codes.append(code.long())
            steps.append(s)
            infos.append(self.store.info(n))
        length = max(f.shape[1] for f in feats)
        if any(f.shape[1] != length for f in feats):
            feats = [F.pad(f, (0, 0, 0, length - f.shape[1])) for f in feats]
        stacked = torch.stack(feats)  # [B, K+1, T, D] storage dtype
        if self.device.type == "cuda":
            stacked = stacked.pin_memory()
        dev = self.device
        stacked = stacked.to(dev, non_blocking=True).float()
        order = torch.stack(orders).to(dev)
        step = torch.tensor(steps, dtype=torch.long, device=dev)
        new_map, still_masked, mask_ratio = step_views(order, step)
        out = {"prev": stacked[:, 0], "target": stacked[:, 1], "codes": torch.stack(codes).to(dev), "order": order,
               "step": step, "new_map": new_map, "still_masked": still_masked, "mask_ratio": mask_ratio,
               "infos": infos, "recorded_lengths": [f.shape[1] for f in feats], "pairs": which.cpu()}
        if k > 1:
            out["targets"] = stacked[:, 1:]
        return out


class OnlineSamples(TrajectorySamples):
    """Trajectories sampled by the base model while training, never written anywhere.

    This rank's j-th sampler run is global run ``i = offset + rank + j * world`` (conditions[i], seed
    ``settings.seed + i``). Before training step t the buffer holds runs ``G(t) - buffer .. G(t) - 1`` with
    ``G(t) = buffer + t // refresh_every``; a resumed run regenerates exactly that window."""

    def __init__(self, generator: MaskedGenerator, conditions: ConditionSchedule, settings: SamplerSettings,
                 online: OnlineSettings, device: torch.device, rollout: int, dist: DistInfo, offset: int = 0,
                 fixed_runs: Optional[Sequence[int]] = None):
        self.generator, self.conditions, self.online, self.dist, self.offset = generator, conditions, online, dist, offset
        self.settings = SamplerSettings(**{**asdict(settings), "budget": None, "full_steps": None})
        self.runs: "OrderedDict[int, list]" = OrderedDict()
        self.fixed_runs = list(fixed_runs) if fixed_runs is not None else None
        self.generated = 0
        super().__init__(_MemoryStore(), device, rollout)
        if self.fixed_runs is not None:
            for j in self.fixed_runs:
                self.runs[j] = self._generate(j)
            self._rebuild()

    def global_run(self, j: int) -> int:
        return self.offset + self.dist.rank + j * self.dist.world

    def _generate(self, j: int) -> list:
        i = self.global_run(j)
        condition = self.conditions[i]
        recorder = TrajectoryRecorder(self.online.storage)
        seed = self.settings.seed + i
        result = sample(self.generator, condition, SamplerSettings(**{**asdict(self.settings), "seed": seed}),
                        callback=recorder)
        self.generated += 1
        return [{**tensors, "info": info} for tensors, info in recorder.items(result, condition, i, seed)]

    def _rebuild(self) -> None:
        self.store = _MemoryStore([item for items in self.runs.values() for item in items])
        self.reindex()

    def ensure(self, step: int) -> None:
        if self.fixed_runs is not None:
            return
        produced = self.online.buffer + step // self.online.refresh_every
        wanted = range(produced - self.online.buffer, produced)
        changed = False
        for j in list(self.runs):
            if j not in wanted:
                del self.runs[j]
                changed = True
        for j in wanted:
            if j not in self.runs:
                self.runs[j] = self._generate(j)
                changed = True
        if changed:
            self._rebuild()


# ------------------------------------------------------------------------------------------------------------
# contexts, loss, evaluation


def needs_row_contexts(generator: MaskedGenerator) -> bool:
    return callable(getattr(generator, "fit_context", None)) or generator.shortcut_arch in ROW_CONTEXT_ARCHS


def merge_row_contexts(parts: Sequence[tuple[Context, int]], length: int, device: torch.device) -> Context:
    """One Context (branches = 1) whose row r is row ``parts[r][1]`` of context ``parts[r][0]``.

    Per-row entries of ``extra`` (tensors whose first dimension is the context's row count, lists of that
    length) are gathered row by row, tensors zero-padded to a common size; other entries are shared. Each row's
    sequence length comes from ``extra['lengths']`` or the context's padding; ``padding`` is [R, length]."""
    rows = len(parts)
    first = parts[0][0]
    extra = {}
    for key, value in first.extra.items():
        if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == first.rows:
            pieces = [ctx.extra[key][r] for ctx, r in parts]
            if any(p.shape != pieces[0].shape for p in pieces):
                size = max(p.shape[0] for p in pieces)
                pieces = [torch.cat([p, p.new_zeros((size - p.shape[0], *p.shape[1:]))]) for p in pieces]
            extra[key] = torch.stack(pieces).to(device)
        elif isinstance(value, list) and len(value) == first.rows:
            extra[key] = [ctx.extra[key][r] for ctx, r in parts]
        else:
            extra[key] = value
    lengths = []
    for ctx, r in parts:
        if isinstance(ctx.extra.get("lengths"), list) and len(ctx.extra["lengths"]) == ctx.rows:
            lengths.append(int(ctx.extra["lengths"][r]))
        elif ctx.padding is not None:
            lengths.append(int((~ctx.padding[r]).sum()))
        else:
            lengths.append(length)
    if max(lengths) > length:
        raise ShortcutError(f"a recorded feature has {length} positions but its prompt needs {max(lengths)}: "
                            "the dataset does not match this generator's prompt layout")
    lens = torch.tensor(lengths, device=device)
    padding = torch.arange(length, device=device)[None, :] >= lens[:, None]
    return Context(batch_size=rows, branches=1, device=device, padding=padding if bool(padding.any()) else None,
                   extra=extra)


class BatchContexts:
    """The Context for a batch of recorded rows. Most backends need none (a bare Context); Lumina-DiMOO's
    ``head`` / ``new_tokens`` read the prompt layout of each row, which is rebuilt from the recorded prompt,
    negative prompt and CFG branch (``prepare`` of that one image, cached per prompt)."""

    def __init__(self, generator: MaskedGenerator, guidance: bool, cache_size: int = 4096):
        self.generator, self.guidance = generator, guidance
        self.rows = needs_row_contexts(generator)
        self.cache: "OrderedDict[tuple, Context]" = OrderedDict()
        self.cache_size = cache_size

    def _prepared(self, info: dict) -> Context:
        negative = info.get("negative_prompt") or None
        key = (info.get("prompt"), negative, info.get("label"))
        ctx = self.cache.get(key)
        if ctx is None:
            if self.generator.condition_kind == "text":
                condition = Condition(prompts=[info["prompt"]], negative_prompts=[negative] if negative else None)
            else:
                condition = Condition(labels=[int(info["label"])])
            ctx = self.generator.prepare(condition, 1, self.guidance)
            self.cache[key] = ctx
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return ctx

    def __call__(self, batch: dict) -> Context:
        prev = batch["prev"]
        rows, device = prev.shape[0], prev.device
        if not self.rows:
            return Context(batch_size=rows, branches=1, device=device)
        infos = batch.get("infos")
        if infos is None:
            raise ShortcutError(f"generator {self.generator.identity!r} needs the recorded prompt of every row; "
                                "this batch source does not carry them")
        hook = getattr(self.generator, "fit_context", None)
        if callable(hook):
            ctx = hook(infos, self.guidance, prev.shape[1])
        else:
            ctx = merge_row_contexts([(self._prepared(info), int(info["branch"])) for info in infos],
                                     prev.shape[1], device)
        if ctx.padding is not None:  # positions past a row's own length hold whatever the recording batch had
            keep = (~ctx.padding)[..., None].to(prev.dtype)
            batch["prev"] = prev * keep
            batch["target"] = batch["target"] * keep
            if "targets" in batch:
                batch["targets"] = batch["targets"] * keep[:, None]
        return ctx


def _image_index(generator: MaskedGenerator, ctx: Context, rows: int) -> torch.Tensor:
    index = ctx.extra.get("image_index") if isinstance(ctx.extra, dict) else None
    if torch.is_tensor(index) and index.dim() == 2 and index.shape[0] == rows:
        return index
    return generator.image_positions(ctx)[None, :].expand(rows, -1)


def _loss_weights(generator: MaskedGenerator, batch: dict, ctx: Context, positions: str, length: int,
                  still_masked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[R, T] weights of the feature positions the loss covers (never padding)."""
    rows = batch["prev"].shape[0]
    device = batch["prev"].device
    if positions == "all":
        weights = torch.ones(rows, length, device=device)
        if ctx.padding is not None:
            weights = weights * (~ctx.padding).float()
        return weights
    still = batch["still_masked"] if still_masked is None else still_masked
    weights = torch.zeros(rows, length, device=device)
    index = _image_index(generator, ctx, rows)
    if index.shape[0] == rows and bool((index == index[:1]).all()):
        weights[:, index[0]] = still.float()
    else:
        weights.scatter_(1, index, still.float())
    return weights


def nonfinite_message(batch: dict, source, when: str, loss: float) -> str:
    """Why a loss is not finite: NaN or inf in the recorded features of the batch (naming the shard and step),
    or else a divergence."""
    for key in ("prev", "target", "targets"):
        value = batch.get(key)
        if value is None or "pairs" not in batch:
            continue
        bad = ~torch.isfinite(value.flatten(1)).all(dim=1)
        if bool(bad.any()):
            where = source.describe(int(batch["pairs"][int(bad.nonzero()[0])]))
            return (f"{when}: the recorded features of {where} hold NaN or infinite values (damaged data, not a "
                    "divergence): delete that shard and rerun the recorder to record it again")
    return f"{when}: training diverged (loss {loss}); lower --lr"


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_position = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_position * weights).sum() / weights.sum().clamp(min=1)


def _head(generator: MaskedGenerator, feature: torch.Tensor, ctx: Context, masked: torch.Tensor) -> torch.Tensor:
    return generator.head(feature.to(generator.dtype), ctx, masked).float()


def _kl(generator, pred, target, ctx, still, temperature) -> torch.Tensor:
    """KL(softmax(head(target)/T) || softmax(head(pred)/T)) per image position [R, L]."""
    with torch.no_grad():
        teacher = torch.log_softmax(_head(generator, target, ctx, still) / temperature, dim=-1)
    student = torch.log_softmax(_head(generator, pred, ctx, still) / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(dim=-1)


@torch.no_grad()
def evaluate(generator: MaskedGenerator, network: torch.nn.Module, samples, batch_size: int = 64,
             limit: Optional[int] = None, contexts: Optional[BatchContexts] = None,
             dist: Optional[DistInfo] = None, split: bool = True) -> dict:
    """Held-out MSE and token agreement (head argmax of predicted vs recorded feature on still-masked
    positions), for the shortcut and for the 'reuse the last feature' baseline. Under torchrun the ranks share
    the work (``split``) or each evaluates its own samples; the totals are summed over ranks."""
    dist = dist or DistInfo()
    contexts = contexts or BatchContexts(generator, guidance=True)
    was_training = network.training
    network.eval()
    totals = torch.zeros(5, dtype=torch.float64)  # mse, baseline_mse, agreement, baseline_agreement, weight
    count = len(samples) if limit is None else min(limit, len(samples))
    starts = list(range(0, count, batch_size))
    if split:
        starts = starts[dist.rank::dist.world]
    for start in starts:
        which = torch.arange(start, min(start + batch_size, count))
        batch = samples.batch(which)
        ctx = contexts(batch)
        new = generator.new_tokens(batch["codes"], batch["new_map"], ctx)
        pred = network(batch["prev"], new, batch["mask_ratio"], ctx.padding)
        weights = _loss_weights(generator, batch, ctx, "masked", batch["prev"].shape[1])
        n = float(weights.sum())
        mse = float(_masked_mse(pred, batch["target"], weights))
        if not math.isfinite(mse):
            raise ShortcutError(nonfinite_message(batch, samples, "validation", mse))
        totals[0] += mse * n
        totals[1] += float(_masked_mse(batch["prev"], batch["target"], weights)) * n
        still = batch["still_masked"]
        target_tokens = _head(generator, batch["target"], ctx, still).argmax(-1)
        for slot, feature in ((2, pred), (3, batch["prev"])):
            agree = (_head(generator, feature, ctx, still).argmax(-1) == target_tokens).float()
            totals[slot] += float((agree * still).sum())
        totals[4] += n
    if dist.enabled:
        totals = _all_reduce(totals.to(_reduce_device(generator)), dist).cpu()
    if was_training:
        network.train()
    weight = max(float(totals[4]), 1)
    return {"mse": float(totals[0]) / weight, "baseline_mse": float(totals[1]) / weight,
            "agreement": float(totals[2]) / weight, "baseline_agreement": float(totals[3]) / weight}


def _reduce_device(generator: MaskedGenerator) -> torch.device:
    """Where collective tensors live: the GPU for nccl, the CPU for gloo."""
    try:
        import torch.distributed as dist
        if dist.is_initialized() and dist.get_backend() == "nccl":
            return generator.device
    except (ImportError, RuntimeError):
        pass
    return torch.device("cpu")


class _Chain(nn.Module):
    """The network applied ``len(news)`` times, each prediction feeding the next call (teacher-forced rollout).
    One module call per training step, so DistributedDataParallel sees a single forward."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, prev: torch.Tensor, news: list, ratios: list, padding: Optional[torch.Tensor]) -> list:
        preds, feature = [], prev
        for new, ratio in zip(news, ratios):
            feature = self.network(feature, new, ratio, padding)
            preds.append(feature)
        return preds


def _resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


# ------------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ShortcutError(f"{path}: not a readable training checkpoint ({err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ShortcutError(f"{path}: not a {CHECKPOINT_FORMAT!r} file")
    return state


RESULT_SETTINGS = ("batch_size", "lr", "weight_decay", "lr_drop_step", "ema", "grad_clip", "val_fraction",
                   "loss_positions", "seed", "mse_weight", "kl_weight", "kl_temperature", "rollout", "amp")


def _fingerprint(parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------
# the training loop


def _train(generator: MaskedGenerator, config: ShortcutConfig, settings: FitSettings, train_source, val_source,
           contexts: BatchContexts, run: RunOptions, dist: DistInfo, log_path: Optional[Path], fingerprint: str,
           report_extra: dict, online: bool = False) -> tuple[nn.Module, dict]:
    device = generator.device
    torch.manual_seed(settings.seed)
    network = build_shortcut(config).to(device)
    network.train()
    ema = copy.deepcopy(network).eval().requires_grad_(False)
    opt = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    amp_dtype = _resolve_amp(settings.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    plan_seed = settings.seed + (7919 * dist.rank if online else 0)
    rng = torch.Generator().manual_seed(plan_seed)
    start, history, elapsed_before = 0, [], 0.0
    if run.resume and run.checkpoint is not None and Path(run.checkpoint).exists():
        state = load_checkpoint(run.checkpoint)
        if state["fingerprint"] != fingerprint:
            raise ShortcutError(f"{run.checkpoint} was written for other data, another split or another setup "
                                "(its fingerprint differs); start without --resume or use the same arguments")
        saved = state["settings"]
        changed = [k for k in RESULT_SETTINGS if saved.get(k) != getattr(settings, k)]
        if changed:
            raise ShortcutError(f"{run.checkpoint} was trained with other settings ({', '.join(changed)}); resume "
                                "with the same values")
        if state["config"] != config.to_dict():
            raise ShortcutError(f"{run.checkpoint} holds another shortcut architecture: {state['config']}")
        network.load_state_dict(state["network"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        rng.set_state(state["plan_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start, history, elapsed_before = int(state["step"]), list(state["history"]), float(state["elapsed"])
        if dist.main:
            log.info("resumed from %s at step %d", run.checkpoint, start)
    elif run.checkpoint is not None and Path(run.checkpoint).exists() and not run.resume and dist.main:
        log.warning("%s exists and will be overwritten (pass resume to continue it)", run.checkpoint)
    model = _Chain(network)
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=None,
                                                    find_unused_parameters=not config.cross_attention)
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    total = settings.steps
    stop_at = min(total, run.max_steps) if run.max_steps else total
    local_batch = settings.batch_size
    if online:  # every rank draws its own share from its own buffer
        local_batch = settings.batch_size // dist.world + (1 if dist.rank < settings.batch_size % dist.world else 0)
    elif settings.batch_size < dist.world:
        raise ShortcutError(f"batch size {settings.batch_size} is smaller than the {dist.world} processes")
    log_file = open(log_path, "a") if (log_path and dist.main) else None
    started = time.time()
    pool = ThreadPoolExecutor(max_workers=1) if (run.prefetch and not online and
                                                 isinstance(train_source, TrajectorySamples)) else None

    def draw() -> torch.Tensor:
        if online:
            train_source.ensure(step_holder[0])
        n = len(train_source)
        if n < 1:
            raise ShortcutError("no (trajectory, step) pairs to train on: trajectories need more than "
                                f"{settings.rollout} steps")
        which = torch.randint(0, n, (local_batch if online else settings.batch_size,), generator=rng)
        return which if online else which[dist.rank::dist.world]

    def fetch(which):
        return pool.submit(train_source.batch, which) if pool is not None else which

    def result(pending):
        return pending.result() if pool is not None else train_source.batch(pending)

    step_holder = [start]
    pending = fetch(draw()) if start < stop_at else None
    bar = tqdm(total=total, initial=start, desc="fit shortcut", unit="step", disable=not (run.progress and dist.main))
    rollout = settings.rollout
    step, last_loss, stopped_early = start, float("nan"), False
    window_started, window_steps = time.time(), 0
    try:
        for step in range(start, stop_at):
            lr = settings.lr * (0.1 if step >= settings.lr_drop_step else 1.0)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = result(pending)
            plan_state = rng.get_state()  # the state that draws step + 1: what a checkpoint after this step keeps
            if step + 1 < stop_at:
                step_holder[0] = step + 1
                pending = fetch(draw())
            ctx = contexts(batch)
            news, ratios, stills, targets = [], [], [], []
            with torch.no_grad():
                for k in range(rollout):
                    if k == 0:
                        new_map, still, ratio = batch["new_map"], batch["still_masked"], batch["mask_ratio"]
                        target = batch["target"]
                    else:
                        new_map, still, ratio = step_views(batch["order"], batch["step"] + k)
                        target = batch["targets"][:, k]
                    news.append(generator.new_tokens(batch["codes"], new_map, ctx))
                    ratios.append(ratio)
                    stills.append(still)
                    targets.append(target)
            with amp:
                preds = model(batch["prev"], news, ratios, ctx.padding)
            length = batch["prev"].shape[1]
            nums, dens, kl_nums, kl_dens = [], [], [], []
            for k in range(rollout):
                weights = _loss_weights(generator, batch, ctx, settings.loss_positions, length, stills[k])
                per_position = (preds[k].float() - targets[k]).pow(2).mean(dim=-1)
                nums.append((per_position * weights).sum())
                dens.append(weights.sum())
                if settings.kl_weight:
                    kl = _kl(generator, preds[k].float(), targets[k], ctx, stills[k], settings.kl_temperature)
                    kl_nums.append((kl * stills[k].float()).sum())
                    kl_dens.append(stills[k].float().sum())
            stop_flag = 1.0 if (run.max_minutes is not None and
                                (time.time() - started) / 60 >= run.max_minutes) else 0.0
            if dist.enabled:  # global denominators, global loss value, agreed stop: one collective
                stats = torch.stack([*[d.detach() for d in dens], *[d.detach() for d in kl_dens],
                                     *[n.detach().float() for n in nums], *[n.detach().float() for n in kl_nums],
                                     torch.tensor(stop_flag, device=device)]).to(_reduce_device(generator))
                stats = _all_reduce(stats, dist).to(device)
                g_dens = list(stats[:rollout])
                g_kl_dens = list(stats[rollout:rollout + len(kl_dens)])
                offset = rollout + len(kl_dens)
                g_nums = list(stats[offset:offset + rollout])
                g_kl_nums = list(stats[offset + rollout:offset + rollout + len(kl_nums)])
                stop_flag = float(stats[-1])
            else:
                g_dens, g_kl_dens, g_nums, g_kl_nums = dens, kl_dens, [n.detach() for n in nums], \
                    [n.detach() for n in kl_nums]
            loss = 0.0
            value = 0.0
            kl_scale = settings.kl_weight * settings.kl_temperature ** 2
            for k in range(rollout):
                term = nums[k] / g_dens[k].clamp(min=1)
                value_term = g_nums[k] / g_dens[k].clamp(min=1)
                if settings.mse_weight != 1.0:
                    term, value_term = term * settings.mse_weight, value_term * settings.mse_weight
                if settings.kl_weight:
                    term = term + kl_scale * kl_nums[k] / g_kl_dens[k].clamp(min=1)
                    value_term = value_term + kl_scale * g_kl_nums[k] / g_kl_dens[k].clamp(min=1)
                loss = term if k == 0 else loss + term
                value = value_term if k == 0 else value + value_term
            if rollout > 1:
                loss, value = loss / rollout, value / rollout
            if dist.enabled:
                loss = loss * dist.world  # DDP averages gradients over ranks; the loss is already a global mean
            loss_value = float(value)
            last_loss = loss_value
            if not math.isfinite(loss_value):
                raise ShortcutError(nonfinite_message(batch, train_source, f"training step {step}", loss_value))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(network.parameters(), settings.grad_clip)
            scaler.step(opt)
            scaler.update()
            decay = min(settings.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema.parameters(), network.parameters()):
                    e.lerp_(p, 1 - decay)
            bar.update(1)
            window_steps += 1
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}")
            done = step + 1
            stopping = stop_flag > 0 and done < total
            if log_file and run.log_every and done % run.log_every == 0:
                now = time.time()
                log_file.write(json.dumps({"kind": "train", "step": done, "train_loss": loss_value, "lr": lr,
                                           "samples_per_s": round(window_steps * settings.batch_size /
                                                                  max(now - window_started, 1e-9), 2),
                                           "seconds": round(elapsed_before + now - started, 1)}) + "\n")
                log_file.flush()
                window_started, window_steps = now, 0
            if done % settings.eval_every == 0 or done == total or done == stop_at or stopping:
                metrics = evaluate(generator, ema, val_source, limit=settings.val_limit, contexts=contexts,
                                   dist=dist, split=not online)
                record = {"step": done, "train_loss": loss_value, "lr": lr,
                          "seconds": round(elapsed_before + time.time() - started, 1),
                          **{f"val_{k}": v for k, v in metrics.items()}}
                history.append(record)
                if dist.main:
                    log.info("step %d: %s", done, record)
                if log_file:
                    log_file.write(json.dumps({"kind": "val", **record}) + "\n")
                    log_file.flush()
            if run.checkpoint is not None and dist.main and (
                    (run.checkpoint_every and done % run.checkpoint_every == 0) or done == stop_at or stopping):
                save_checkpoint(run.checkpoint, {
                    "format": CHECKPOINT_FORMAT, "version": 1, "step": done, "network": network.state_dict(),
                    "ema": ema.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                    "plan_rng": plan_state, "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "history": history, "settings": asdict(settings), "config": config.to_dict(),
                    "fingerprint": fingerprint, "elapsed": elapsed_before + time.time() - started,
                    "world": dist.world})
            if stopping:
                stopped_early = True
                break
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True)
        if log_file:
            log_file.close()
    _barrier(dist)
    steps_done = step + 1 if stop_at > start else start
    if not history:
        metrics = evaluate(generator, ema, val_source, limit=settings.val_limit, contexts=contexts, dist=dist,
                           split=not online)
        history.append({"step": steps_done, "train_loss": last_loss, "lr": settings.lr,
                        "seconds": round(elapsed_before, 1), **{f"val_{k}": v for k, v in metrics.items()}})
    final = history[-1]
    seconds = time.time() - started
    trained = steps_done - start
    report = {"settings": asdict(settings), **report_extra, "seconds": round(elapsed_before + seconds, 1),
              "steps_done": steps_done, "complete": steps_done >= total, "world_size": dist.world,
              "samples_per_second": round(trained * settings.batch_size / max(seconds, 1e-9), 2),
              "stopped_early": stopped_early or steps_done < total,
              "val_mse": final["val_mse"], "val_baseline_mse": final["val_baseline_mse"],
              "val_agreement": final["val_agreement"], "val_baseline_agreement": final["val_baseline_agreement"]}
    return ema, report


def _choose_in_memory(dataset: TrajectoryDataset, run: RunOptions, dist: DistInfo) -> bool:
    if run.data_in_memory in ("yes", True):
        return True
    if run.data_in_memory in ("no", False):
        return False
    if run.data_in_memory != "auto":
        raise ShortcutError(f"data_in_memory must be 'auto', 'yes' or 'no', got {run.data_in_memory!r}")
    available = available_ram()
    need = dataset.bytes * (dist.world if dist.enabled else 1)
    if available is None:
        return need < (2 << 30)
    return need < run.memory_fraction * available


def _check_generator(generator: MaskedGenerator, recorded: dict, where: str, config: ShortcutConfig) -> None:
    if recorded.get("generator") != generator.identity:
        raise ShortcutError(f"{where} holds trajectories of {recorded.get('generator')!r}, "
                            f"not of generator {generator.identity!r}")
    if config.feature_dim != generator.feature_dim:
        raise ShortcutError(f"shortcut feature_dim {config.feature_dim} != generator feature size {generator.feature_dim}")
    size = recorded.get("image_size")
    if size and hasattr(generator, "set_image_size") and list(getattr(generator, "image_size", [])) != list(size):
        generator.set_image_size(*size)
    if recorded.get("grid") and list(recorded["grid"]) != list(generator.grid_size):
        raise ShortcutError(f"{where} was recorded on a {recorded['grid']} token grid, the generator has "
                            f"{list(generator.grid_size)}")


def fit_shortcut(generator: MaskedGenerator, dataset: TrajectoryDataset, config: ShortcutConfig,
                 settings: FitSettings, log_path: Optional[Path] = None, run: Optional[RunOptions] = None,
                 dist: Optional[DistInfo] = None) -> tuple[torch.nn.Module, dict]:
    """Train a shortcut on ``dataset``; returns the EMA network and a report with validation figures."""
    settings.validate()
    run = run or RunOptions()
    dist = dist or DistInfo()
    _check_generator(generator, dataset.index["generator"], str(dataset.folder), config)
    device = generator.device
    torch.manual_seed(settings.seed)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(settings.seed)).tolist()
    n_val = max(1, int(round(len(order) * settings.val_fraction)))
    if len(order) - n_val < 1:
        raise ShortcutError(f"need at least 2 trajectories to hold some out, found {len(order)}")
    train_ids, val_ids = sorted(order[n_val:]), sorted(order[:n_val])
    rows = needs_row_contexts(generator)
    uniform = len({shape[1:] for shape in dataset.shapes}) == 1
    in_memory = _choose_in_memory(dataset, run, dist)
    if in_memory and uniform and not rows:
        storage_device = device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if dataset.bytes > 0.5 * free:
                storage_device = torch.device("cpu")
        train = StepSamples(dataset, train_ids, device, rollout=settings.rollout, storage_device=storage_device)
        val = StepSamples(dataset, val_ids, device, storage_device=storage_device)
        mode = "memory"
    elif in_memory:
        train = TrajectorySamples(_MemoryStore.preload(dataset, train_ids), device, rollout=settings.rollout)
        val = TrajectorySamples(_MemoryStore.preload(dataset, val_ids), device)
        mode = "memory-list"
    else:
        train = TrajectorySamples(_DatasetStore(dataset, train_ids), device, rollout=settings.rollout)
        val = TrajectorySamples(_DatasetStore(dataset, val_ids), device)
        mode = "memory-mapped"
    if dist.main:
        log.info("data: %d train / %d val trajectories, %d train pairs, %s (%s)", len(train_ids), len(val_ids),
                 len(train), mode, dataset.folder)
    guidance = float(dataset.index["settings"].get("cfg_scale", 1.0)) != 0
    contexts = BatchContexts(generator, guidance)
    fingerprint = _fingerprint({"shards": [(s["file"], s["bytes"]) for s in dataset.index["shards"]
                                           if s["file"] not in {b for b, _ in dataset.bad_shards}],
                                "n": len(dataset), "val": val_ids, "generator": generator.identity})
    extra = {"train_trajectories": len(train_ids), "val_trajectories": n_val, "train_pairs": len(train),
             "val_pairs": len(val), "data_mode": mode, "skipped_shards": [b for b, _ in dataset.bad_shards]}
    return _train(generator, config, settings, train, val, contexts, run, dist, log_path, fingerprint, extra)


def fit_shortcut_online(generator: MaskedGenerator, conditions: ConditionSchedule, sampler_settings: SamplerSettings,
                        config: ShortcutConfig, settings: FitSettings, online: Optional[OnlineSettings] = None,
                        log_path: Optional[Path] = None, run: Optional[RunOptions] = None,
                        dist: Optional[DistInfo] = None) -> tuple[torch.nn.Module, dict]:
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
    train = OnlineSamples(generator, conditions, sampler_settings, online, device, settings.rollout, dist)
    contexts = BatchContexts(generator, sampler_settings.cfg_scale != 0)
    fingerprint = _fingerprint({"online": asdict(online), "sampler": asdict(sampler_settings),
                                "generator": generator.identity, "world": dist.world,
                                "conditions": [asdict(conditions[i]) for i in range(min(4, online.buffer))]})
    extra = {"online": asdict(online), "sampler_settings": asdict(sampler_settings), "val_pairs": len(val)}
    network, report = _train(generator, config, settings, train, val, contexts, run, dist, log_path, fingerprint,
                             extra, online=True)
    report["sampler_runs"] = train.generated + val.generated
    report["train_trajectories"] = None
    report["val_trajectories"] = len(val.store)
    return network, report
