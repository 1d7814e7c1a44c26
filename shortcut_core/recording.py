"""Trajectory recording: run the base sampler with every step full and keep, per trajectory and per CFG
branch, every step's last feature, the step at which each position was decoded, and the final tokens.

A dataset is a folder of safetensors shards plus ``index.json``. Shards are written to a temporary file
and renamed into place, then the index is rewritten the same way, so a killed run leaves only whole shards
and resumes after the last one. Tensor keys in a shard, for trajectory j: ``{j}.features`` [S, T, D]
(fp16 by default), ``{j}.order`` [L] int16 (decode step, -1 = never), ``{j}.codes`` [L] int32; the shard
metadata ``items`` lists ``{"branch", "label", "prompt", "seed", "batch_index"}`` per trajectory.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from safetensors.torch import safe_open

from .generator import Condition, MaskedGenerator, ShortcutError
from .sampler import SampleResult, SamplerSettings, StepInfo, sample
from .weights import atomic_write, save_safetensors

log = logging.getLogger(__name__)

TRAJECTORY_FORMAT = "migm-trajectories"
STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SHARD_PATTERN = re.compile(r"shard-r(\d+)-(\d+)\.safetensors$")


class TrajectoryRecorder:
    """A sampler callback that keeps every step's feature (on CPU, in the storage dtype)."""

    def __init__(self, storage: str = "fp16"):
        if storage not in STORAGE_DTYPES:
            raise ShortcutError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}")
        self.dtype = STORAGE_DTYPES[storage]
        self.features: list[torch.Tensor] = []

    def __call__(self, info: StepInfo) -> None:
        if not info.is_full:
            raise ShortcutError("trajectories must be recorded with every step full (budget = steps)")
        self.features.append(info.feature.detach().to("cpu", self.dtype))

    def items(self, result: SampleResult, condition: Condition, batch_index: int, seed: int):
        """(tensors, info) per trajectory: one per image and CFG branch."""
        stacked = torch.stack(self.features, dim=1)  # [R, S, T, D]
        batch = result.codes.shape[0]
        for row in range(stacked.shape[0]):
            image, branch = row % batch, row // batch
            tensors = {"features": stacked[row].contiguous(),
                       "order": result.decode_order[image].to("cpu", torch.int16),
                       "codes": result.codes[image].to("cpu", torch.int32)}
            info = {"branch": branch, "seed": seed, "batch_index": batch_index, "image": image,
                    "label": int(condition.labels[image]) if condition.labels is not None else None,
                    "prompt": condition.prompts[image] if condition.prompts is not None else None}
            yield tensors, info


def _read_index(folder: Path) -> Optional[dict]:
    path = folder / "index.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShortcutError(f"{path}: not a valid trajectory index ({err})") from err


def _write_index(folder: Path, index: dict) -> None:
    atomic_write(folder / "index.json", lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))


def open_dataset(folder: Path, generator: MaskedGenerator, settings: SamplerSettings, storage: str) -> dict:
    """Create or reopen a dataset folder; refuse one recorded with another generator or other settings."""
    folder.mkdir(parents=True, exist_ok=True)
    index = _read_index(folder)
    described = generator.describe()
    recorded = {"steps": settings.steps, "schedule": settings.schedule, "cfg_scale": settings.cfg_scale,
                "cfg_ramp": settings.cfg_ramp, "sm_temp": settings.sm_temp, "r_temp": settings.r_temp}
    if index is None:
        index = {"format": TRAJECTORY_FORMAT, "version": 1, "generator": described, "settings": recorded,
                 "storage": storage, "shards": [], "trajectories": 0, "bytes": 0}
        _write_index(folder, index)
        return index
    if index.get("format") != TRAJECTORY_FORMAT:
        raise ShortcutError(f"{folder}: index.json is not a {TRAJECTORY_FORMAT!r} index")
    if index["generator"].get("generator") != described["generator"]:
        raise ShortcutError(f"{folder} holds trajectories of generator {index['generator'].get('generator')!r}, "
                            f"not {described['generator']!r}: record into another folder")
    if index["settings"] != recorded:
        raise ShortcutError(f"{folder} was recorded with settings {index['settings']}, not {recorded}: "
                            "record into another folder or use the same settings")
    return index


def record(generator: MaskedGenerator, folder: Path, conditions: Sequence[Condition], settings: SamplerSettings,
           storage: str = "fp16", rank: int = 0, callback=None) -> dict:
    """Record one shard per condition batch (batch i uses seed ``settings.seed + i``), skipping shards that
    already exist: rerunning the same command resumes. Returns the updated index."""
    folder = Path(folder)
    settings = SamplerSettings(**{**asdict(settings), "budget": None, "full_steps": None})
    index = open_dataset(folder, generator, settings, storage)
    done = {entry["file"] for entry in index["shards"]}
    for batch_index, condition in enumerate(conditions):
        name = f"shard-r{rank:02d}-{batch_index:06d}.safetensors"
        if name in done:
            continue
        recorder = TrajectoryRecorder(storage)
        seed = settings.seed + batch_index

        def step_callback(info: StepInfo) -> None:
            recorder(info)
            if callback is not None:
                callback(info)

        result = sample(generator, condition, SamplerSettings(**{**asdict(settings), "seed": seed}),
                        callback=step_callback)
        tensors, items = {}, []
        for j, (item_tensors, info) in enumerate(recorder.items(result, condition, batch_index, seed)):
            tensors.update({f"{j}.{key}": value for key, value in item_tensors.items()})
            items.append(info)
        save_safetensors(folder / name, tensors, {"format": TRAJECTORY_FORMAT, "items": items})
        size = (folder / name).stat().st_size
        index["shards"].append({"file": name, "trajectories": len(items), "bytes": size})
        index["trajectories"] += len(items)
        index["bytes"] += size
        _write_index(folder, index)
    return index


def dataset_summary(folder: Path) -> dict:
    """Trajectories and bytes a dataset folder holds (from its index)."""
    index = _read_index(Path(folder))
    if index is None:
        return {"trajectories": 0, "bytes": 0, "shards": 0}
    return {"trajectories": index["trajectories"], "bytes": index["bytes"], "shards": len(index["shards"]),
            "generator": index["generator"].get("generator")}


class TrajectoryDataset:
    """Read access to a recorded folder: memory-mapped shards, one entry per trajectory."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = _read_index(self.folder)
        if index is None:
            raise ShortcutError(f"{self.folder}: no index.json; record trajectories into it first")
        self.index = index
        self.entries: list[tuple[str, int, dict]] = []
        for shard in index["shards"]:
            path = self.folder / shard["file"]
            try:
                with safe_open(str(path), framework="pt") as handle:
                    items = json.loads(handle.metadata()["items"])
            except Exception as err:
                raise ShortcutError(f"{path}: unreadable trajectory shard ({err})") from err
            self.entries.extend((shard["file"], j, info) for j, info in enumerate(items))

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int) -> dict[str, torch.Tensor]:
        file, j, info = self.entries[i]
        with safe_open(str(self.folder / file), framework="pt") as handle:
            return {key: handle.get_tensor(f"{j}.{key}") for key in ("features", "order", "codes")}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(self)):
            yield self.load(i)
