"""What fitting trains on: (trajectory, step) pairs and their batches.

A sample is (feature at step s, tokens decoded at step s, masked fraction after step s) -> feature at step s + 1
(and the next ``rollout - 1`` features). Small datasets are loaded into memory (``StepSamples``), large ones are
read from the memory-mapped shards (``TrajectorySamples``), chosen from the free RAM; both give the same
batches. Rows with different numbers of new tokens or different sequence lengths are padded and masked (no
per-sample loop in the model). ``OnlineSamples`` samples trajectories with the base model while training and
keeps only a rolling buffer.
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import asdict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..files import available_ram
from ..generator import MaskedGenerator, ShortcutError
from ..recording import ConditionSchedule, TrajectoryDataset, TrajectoryRecorder
from ..sampler import SamplerSettings, sample
from .distributed import DistInfo
from .settings import OnlineSettings, RunOptions


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


def choose_in_memory(dataset: TrajectoryDataset, run: RunOptions, dist: DistInfo) -> bool:
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


def open_samples(generator: MaskedGenerator, dataset: TrajectoryDataset, train_ids: list[int], val_ids: list[int],
                 rollout: int, run: RunOptions, dist: DistInfo) -> tuple[TrajectorySamples | StepSamples,
                                                                         TrajectorySamples | StepSamples, str]:
    """(train samples, validation samples, data mode): stacked in memory when the data fits and every trajectory has
    the same shape and no row needs its own context; a list in memory; or read from the memory-mapped shards."""
    device = generator.device
    uniform = len({shape[1:] for shape in dataset.shapes}) == 1
    in_memory = choose_in_memory(dataset, run, dist)
    if in_memory and uniform and not generator.per_row_context:
        storage_device = device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if dataset.bytes > 0.5 * free:
                storage_device = torch.device("cpu")
        train = StepSamples(dataset, train_ids, device, rollout=rollout, storage_device=storage_device)
        return train, StepSamples(dataset, val_ids, device, storage_device=storage_device), "memory"
    if in_memory:
        train = TrajectorySamples(_MemoryStore.preload(dataset, train_ids), device, rollout=rollout)
        return train, TrajectorySamples(_MemoryStore.preload(dataset, val_ids), device), "memory-list"
    train = TrajectorySamples(_DatasetStore(dataset, train_ids), device, rollout=rollout)
    return train, TrajectorySamples(_DatasetStore(dataset, val_ids), device), "memory-mapped"
