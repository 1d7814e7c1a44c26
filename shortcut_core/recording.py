"""Trajectory recording: run the base sampler with every step full and keep, per trajectory and per CFG
branch, every step's last feature, the step at which each position was decoded, and the final tokens.

A dataset is a folder of safetensors shards plus an index. Tensor keys in a shard, for trajectory j:
``{j}.features`` [S, T, D] (fp16 by default), ``{j}.order`` [L] int16 (decode step, -1 = never), ``{j}.codes``
[L] int32; the shard metadata ``items`` lists ``{"branch", "seed", "batch_index", "image", "label", "prompt"}``
per trajectory (plus ``negative_prompt`` when one was given).

At scale:

* One shard per condition batch; batch i is sampled with seed ``settings.seed + i``, so the same arguments give
  the same shards byte for byte. Memory holds one batch at a time, whatever the number of trajectories.
* Shards are written to a temporary file and renamed into place, then the writer's index is rewritten the same
  way: a killed run leaves only whole shards and resumes after them (a whole shard the index missed is checked
  and adopted, a listed shard whose size no longer matches is set aside as ``*.bad`` and recorded again).
* Several processes (or torchrun ranks) fill one folder: batch i belongs to rank ``i % world_size``. Rank 0 keeps
  ``index.json``, rank k > 0 its own ``index-rKK.json``; readers merge them (``load_index``), so concurrent
  writers never touch the same file. A per-rank lock file refuses a second writer with the same rank.
* Before starting, the bytes still to write are estimated and compared with the free disk space.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from safetensors.torch import safe_open

from .dtypes import STORAGE_DTYPES
from .files import free_disk_bytes, human_bytes, read_json, save_safetensors, write_json
from .generator import Condition, MaskedGenerator, ShortcutError
from .sampler import SampleResult, SamplerSettings, StepInfo, sample
from .validation import check_seed, parse_class_labels

log = logging.getLogger(__name__)

TRAJECTORY_FORMAT = "migm-trajectories"
SHARD_PATTERN = re.compile(r"shard-r(\d+)-(\d+)\.safetensors$")
RANK_INDEX_PATTERN = re.compile(r"index-r(\d+)\.json$")
HEADER_BYTES_PER_TRAJECTORY = 640  # safetensors header entries + item metadata, rounded up (measured ~400-500)


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
        self.features = []  # the stacked copy is all that is kept from here on
        batch = result.codes.shape[0]
        negatives = list(condition.negative_prompts or [])
        for row in range(stacked.shape[0]):
            image, branch = row % batch, row // batch
            tensors = {"features": stacked[row].contiguous(),
                       "order": result.decode_order[image].to("cpu", torch.int16),
                       "codes": result.codes[image].to("cpu", torch.int32)}
            info = {"branch": branch, "seed": seed, "batch_index": batch_index, "image": image,
                    "label": int(condition.labels[image]) if condition.labels is not None else None,
                    "prompt": condition.prompts[image] if condition.prompts is not None else None}
            if negatives:  # only when given, so datasets recorded without one keep their exact bytes
                info["negative_prompt"] = negatives[image if len(negatives) > 1 else 0]
            yield tensors, info


# ------------------------------------------------------------------------------------------------------------
# conditions


def recorded_condition(info: dict) -> Condition:
    """The condition of one recorded trajectory (its image alone), from its shard item."""
    if info.get("prompt") is not None:
        negative = info.get("negative_prompt") or None
        return Condition(prompts=[info["prompt"]], negative_prompts=[negative] if negative else None)
    return Condition(labels=[int(info["label"])])


class ConditionSchedule(Sequence):
    """Batch i of ``count`` images: image k gets ``labels[k % len(labels)]`` (class generators) or
    ``prompts[k % len(prompts)]`` (text generators). Built on demand, so a million images cost nothing."""

    def __init__(self, generator: MaskedGenerator, count: Optional[int], batch: int,
                 labels: Optional[Sequence[int]] = None, prompts: Optional[Sequence[str]] = None,
                 negative_prompts: Optional[Sequence[Optional[str]]] = None):
        if batch < 1:
            raise ShortcutError(f"batch must be >= 1, got {batch}")
        if count is not None and count < 1:
            raise ShortcutError(f"count must be >= 1, got {count}")
        self.count, self.batch = count, batch
        self.kind = generator.condition_kind
        if self.kind == "text":
            if not prompts:
                raise ShortcutError(f"generator {generator.identity!r} is text-to-image: give prompts "
                                    "(--prompt or --prompts FILE)")
            self.prompts = list(prompts)
            negatives = list(negative_prompts or [])
            self.negatives = negatives if any(n for n in negatives) else None
        else:
            classes = max(generator.num_classes, 1)
            self.labels = list(labels) if labels else list(range(classes))
            for label in self.labels:
                if not 0 <= int(label) < classes:
                    raise ShortcutError(f"class label {label} is out of range: allowed 0..{classes - 1}")

    def fingerprint(self) -> str:
        """Changes when the cycled labels or prompts change (recorded, so a resume cannot mix two datasets)."""
        cycled = self.prompts + [self.negatives] if self.kind == "text" else self.labels
        return hashlib.sha1(json.dumps(cycled).encode("utf-8")).hexdigest()[:16]

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("an unbounded ConditionSchedule has no length")
        return (self.count + self.batch - 1) // self.batch

    def size(self, i: int) -> int:
        if self.count is None:
            return self.batch
        return min(self.batch, self.count - i * self.batch)

    def __getitem__(self, i: int) -> Condition:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0 or (self.count is not None and i >= len(self)):
            raise IndexError(i)
        start, size = i * self.batch, self.size(i)
        if self.kind == "text":
            prompts = [self.prompts[(start + k) % len(self.prompts)] for k in range(size)]
            negatives = None
            if self.negatives is not None:
                negatives = [self.negatives[(start + k) % len(self.negatives)] or "" for k in range(size)]
            return Condition(prompts=prompts, negative_prompts=negatives)
        return Condition(labels=[self.labels[(start + k) % len(self.labels)] for k in range(size)])


def read_prompt_file(path: Path) -> tuple[list[str], list[Optional[str]]]:
    """Prompts from a text file (one per line; blank lines and lines starting with '#' skipped) or a JSONL file
    of ``{"prompt": ..., "negative_prompt": ...}`` objects. Returns (prompts, negative prompts or None each)."""
    path = Path(path)
    if not path.is_file():
        raise ShortcutError(f"prompt file not found: {path}")
    prompts, negatives = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(text)
                prompts.append(str(row["prompt"]))
                negatives.append(row.get("negative_prompt"))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ShortcutError(f"{path}:{number}: expected a JSON object with a 'prompt' ({err})") from err
        else:
            prompts.append(text)
            negatives.append(None)
    if not prompts:
        raise ShortcutError(f"{path}: no prompts in this file")
    return prompts, negatives


# ------------------------------------------------------------------------------------------------------------
# the index: index.json (rank 0) and index-rKK.json (rank k), merged on read


def condition_schedule(generator: MaskedGenerator, count: Optional[int], batch: int, classes: Optional[str] = None,
                       prompts: Optional[Sequence[str]] = None, prompt_file: Optional[str] = None,
                       negative_prompt: Optional[str] = None) -> ConditionSchedule:
    """The schedule the command-line scripts cycle: ``classes`` as comma-separated labels, prompts given one by one
    and from a file (its own negative prompts, else ``negative_prompt``)."""
    if generator.condition_kind == "text" and classes is not None:
        raise ShortcutError(f"--classes {classes!r}: generator {generator.identity!r} is text-to-image; give "
                            "--prompt or --prompts FILE instead")
    if generator.condition_kind != "text" and (prompts or prompt_file or negative_prompt):
        given = (prompts or [prompt_file or negative_prompt])[0]
        raise ShortcutError(f"prompt {given!r}: generator {generator.identity!r} is class-conditional and ignores "
                            "prompts; drop --prompt/--prompts/--negative-prompt and choose --classes")
    texts, negatives = list(prompts or []), [negative_prompt] * len(prompts or [])
    if prompt_file:
        file_prompts, file_negatives = read_prompt_file(Path(prompt_file))
        texts += file_prompts
        negatives += [n or negative_prompt for n in file_negatives]
    labels = parse_class_labels(classes, generator.class_names, generator.num_classes)
    return ConditionSchedule(generator, count, batch, labels=labels, prompts=texts or None,
                             negative_prompts=negatives if any(negatives) else None)


def index_path(folder: Path, rank: int) -> Path:
    return Path(folder) / ("index.json" if rank == 0 else f"index-r{rank:02d}.json")


def _index_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    files = [folder / "index.json"] if (folder / "index.json").exists() else []
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if RANK_INDEX_PATTERN.match(p.name))
    return files


def _read_json_index(path: Path) -> dict:
    index = read_json(path)
    if not isinstance(index, dict) or index.get("format") != TRAJECTORY_FORMAT:
        raise ShortcutError(f"{path} is not a {TRAJECTORY_FORMAT!r} index")
    return index


def shard_batch_index(entry: dict) -> int:
    if "batch_index" in entry:
        return int(entry["batch_index"])
    match = SHARD_PATTERN.search(entry["file"])
    return int(match.group(2)) if match else -1


def _header(index: dict) -> tuple:
    return (index["generator"].get("generator"), json.dumps(index["settings"], sort_keys=True), index["storage"])


def load_index(folder: Path) -> Optional[dict]:
    """The merged index of a dataset folder (every rank's index file), or None when there is none.

    Shards are listed by batch index; ``trajectories`` and ``bytes`` are totals over all of them."""
    folder = Path(folder)
    files = _index_files(folder)
    if not files:
        return None
    merged, seen = None, {}
    for path in files:
        index = _read_json_index(path)
        if merged is None:
            merged = {k: v for k, v in index.items() if k not in ("shards", "trajectories", "bytes")}
            merged["index_files"] = []
        elif _header(index) != _header(merged):
            raise ShortcutError(f"{path} was written for another generator, other settings or storage than "
                                f"{files[0].name} ({_header(index)} vs {_header(merged)}): these ranks did not "
                                "record the same dataset")
        merged["index_files"].append(path.name)
        for entry in index.get("shards", []):
            batch = shard_batch_index(entry)
            if batch in seen and batch >= 0:
                log.warning("%s: batch %d is recorded twice (%s and %s); using the first", folder, batch,
                            seen[batch]["file"], entry["file"])
                continue
            seen[batch] = entry
    merged["shards"] = [seen[b] for b in sorted(seen)]
    merged["trajectories"] = sum(int(e["trajectories"]) for e in merged["shards"])
    merged["bytes"] = sum(int(e["bytes"]) for e in merged["shards"])
    return merged


def _write_index(folder: Path, index: dict, rank: int = 0) -> None:
    write_json(index_path(folder, rank), index)


def _recorded_settings(settings: SamplerSettings, conditions=None) -> dict:
    """Every setting that changes the recorded data (with the generator and the storage dtype): a resume with
    other values is refused instead of mixing two datasets in one folder."""
    recorded = {"steps": settings.steps, "schedule": settings.schedule, "cfg_scale": settings.cfg_scale,
                "cfg_ramp": settings.cfg_ramp, "sm_temp": settings.sm_temp, "r_temp": settings.r_temp,
                "confidence": settings.confidence, "autocast": settings.autocast, "seed": settings.seed}
    if isinstance(conditions, ConditionSchedule):
        recorded.update(batch=conditions.batch, conditions=conditions.fingerprint())
    return recorded


def _settings_differences(folder: Path, before: dict, now: dict) -> None:
    """Refuse ``now`` when a setting an earlier run recorded differs (settings it did not record are not
    compared: datasets from older versions resume as before)."""
    changed = [key for key in now if key in before and before[key] != now[key]]
    if changed:
        was = ", ".join(f"{key} {before[key]!r}" for key in changed)
        asked = ", ".join(f"{key} {now[key]!r}" for key in changed)
        raise ShortcutError(f"{folder} was recorded with settings {was}, but this run asks for {asked}: record into another "
                            "folder, or resume with the same settings")


def open_dataset(folder: Path, generator: MaskedGenerator, settings: SamplerSettings, storage: str,
                 rank: int = 0, conditions=None) -> dict:
    """Create or reopen a dataset folder for writer ``rank``; refuse one recorded with another generator or other
    settings. Returns this rank's own index (the one it rewrites)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    described = generator.describe()
    recorded = _recorded_settings(settings, conditions)
    merged = load_index(folder)
    if merged is not None:
        if merged["generator"].get("generator") != described["generator"]:
            raise ShortcutError(f"{folder} holds trajectories of generator {merged['generator'].get('generator')!r}, "
                                f"not {described['generator']!r}: record into another folder")
        _settings_differences(folder, merged["settings"], recorded)
        if merged["storage"] != storage:
            raise ShortcutError(f"{folder} stores features as {merged['storage']}, not {storage}: record into "
                                "another folder or use the same --storage")
    own = index_path(folder, rank)
    if own.exists():
        return _read_json_index(own)
    index = {"format": TRAJECTORY_FORMAT, "version": 1, "generator": described, "settings": recorded,
             "storage": storage, "shards": [], "trajectories": 0, "bytes": 0}
    if rank:
        index["rank"] = rank
    _write_index(folder, index, rank)
    return index


class _RankLock:
    """An exclusive lock on ``.lock-rKK`` in the folder: refuses a second writer with the same rank. Released by
    the OS when the process dies, even on SIGKILL. A no-op where ``fcntl`` does not exist (Windows)."""

    def __init__(self, folder: Path, rank: int):
        self.path = Path(folder) / f".lock-r{rank:02d}"
        self.handle = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self.handle.close()
            self.handle = None
            raise ShortcutError(f"another recorder with the same rank is writing into {self.path.parent} "
                                f"({self.path.name} is locked): give each process its own --rank") from err
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()  # closing releases the flock


def file_crc32(path: Path, chunk: int = 1 << 24) -> int:
    value = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                return value
            value = zlib.crc32(block, value)


def check_shard(path: Path, entry: Optional[dict] = None, verify: bool = False) -> Optional[str]:
    """None when the shard is whole, else what is wrong with it. Always: it exists, has the size the index
    recorded, a readable header with the listed trajectories and their tensors. ``verify``: also its CRC32."""
    path = Path(path)
    if not path.is_file():
        return "file missing"
    size = path.stat().st_size
    if entry is not None and "bytes" in entry and int(entry["bytes"]) != size:
        return f"size {size} bytes, the index recorded {entry['bytes']} (truncated or overwritten)"
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            keys = set(handle.keys())
            items = json.loads(meta.get("items", "null"))
            if not isinstance(items, list) or meta.get("format") != TRAJECTORY_FORMAT:
                return "not a trajectory shard (metadata format/items missing)"
            if entry is not None and len(items) != int(entry.get("trajectories", len(items))):
                return f"{len(items)} trajectories inside, the index recorded {entry['trajectories']}"
            for j in range(len(items)):
                for key in ("features", "order", "codes"):
                    if f"{j}.{key}" not in keys:
                        return f"tensor {j}.{key} missing"
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
        return f"unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if verify and entry is not None and "crc32" in entry and file_crc32(path) != int(entry["crc32"]):
        return "CRC32 mismatch (corrupted bytes)"
    return None


def _shard_entry(folder: Path, name: str, batch_index: int, trajectories: int, crc: bool = True) -> dict:
    path = Path(folder) / name
    entry = {"file": name, "trajectories": trajectories, "bytes": path.stat().st_size, "batch_index": batch_index}
    if crc:
        entry["crc32"] = file_crc32(path)
    return entry


# ------------------------------------------------------------------------------------------------------------
# estimating what a recording needs


def trajectory_bytes(steps: int, sequence: int, feature_dim: int, tokens: int, storage: str = "fp16") -> int:
    """Bytes one trajectory (one image, one CFG branch) takes in a shard."""
    itemsize = torch.tensor([], dtype=STORAGE_DTYPES[storage]).element_size()
    return steps * sequence * feature_dim * itemsize + tokens * (2 + 4) + HEADER_BYTES_PER_TRAJECTORY


def estimate_recording(generator: MaskedGenerator, conditions: Sequence[Condition], settings: SamplerSettings,
                       storage: str, batches: Sequence[int]) -> dict:
    """Bytes the given batches will write (from the first one's sequence length)."""
    guidance = settings.cfg_scale != 0
    branches = 2 if guidance else 1
    if not batches:
        return {"batches": 0, "trajectories": 0, "bytes": 0, "bytes_per_trajectory": 0, "sequence": 0}
    first = conditions[batches[0]]
    sequence = generator.sequence_length(generator.prepare(first, first.size, guidance))
    per = trajectory_bytes(settings.steps, sequence, generator.feature_dim, generator.num_tokens, storage)
    trajectories = 0
    for i in batches:
        trajectories += _condition_size(conditions, i) * branches
    return {"batches": len(batches), "trajectories": trajectories, "bytes": trajectories * per,
            "bytes_per_trajectory": per, "sequence": sequence}


# ------------------------------------------------------------------------------------------------------------
# recording


def _cleanup_temporaries(folder: Path, rank: int) -> None:
    """Temporary files a killed writer with this rank left behind (never another rank's)."""
    prefixes = [f".shard-r{rank:02d}-", f".{index_path(folder, rank).name}."]
    for path in Path(folder).iterdir():
        if path.name.endswith(".tmp") and any(path.name.startswith(p) for p in prefixes):
            try:
                path.unlink()
            except OSError:
                pass


def _set_aside(path: Path) -> Path:
    """Rename a damaged shard to ``*.bad`` (never deleted: the user decides)."""
    target = path.with_name(path.name + ".bad")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.bad{n}")
        n += 1
    os.replace(path, target)
    return target


def _condition_size(conditions: Sequence[Condition], i: int) -> int:
    return conditions.size(i) if isinstance(conditions, ConditionSchedule) else conditions[i].size


def _check_recorded_sizes(folder: Path, shards: list, conditions: Sequence[Condition], branches: int) -> None:
    """A recorded batch must hold the trajectories this run would record for it (another --count changes the
    size of the last batch)."""
    for entry in shards:
        i = shard_batch_index(entry)
        if 0 <= i < len(conditions) and int(entry["trajectories"]) != _condition_size(conditions, i) * branches:
            raise ShortcutError(f"{folder}: batch {i} ({entry['file']}) holds {entry['trajectories']} trajectories, "
                                f"but this run would record {_condition_size(conditions, i) * branches} for it (was "
                                "--count changed?): record into another folder, or resume with the same --count")


def check_finite_features(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse recorded features holding NaN or inf (overflow of the storage dtype included), naming the step."""
    for key, value in tensors.items():
        if key.endswith(".features") and not bool(torch.isfinite(value).all()):
            steps = (~torch.isfinite(value)).flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise ShortcutError(f"{where}: trajectory {key.split('.')[0]} has NaN or infinite features at step(s) "
                                f"{steps[:8]}; nothing was written. The base model overflowed: record with "
                                "--dtype fp32, or --storage bf16/fp32 when fp16 storage overflows (|x| > 65504)")


def record(generator: MaskedGenerator, folder: Path, conditions: Sequence[Condition], settings: SamplerSettings,
           storage: str = "fp16", rank: int = 0, callback=None, world_size: int = 1, check_disk: bool = True,
           verify: bool = False, announce: Optional[Callable[[str], None]] = None) -> dict:
    """Record one shard per condition batch (batch i uses seed ``settings.seed + i``) for the batches this rank
    owns (``i % world_size == rank``), skipping batches any rank already recorded: rerunning the same command
    resumes. Refuses when the free disk space cannot hold what is left (``check_disk``). ``verify`` re-reads this
    rank's existing shards and checks their CRC32. Returns the merged index of the folder."""
    folder = Path(folder)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ShortcutError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
    say = announce or log.info
    settings = SamplerSettings(**{**asdict(settings), "budget": None, "full_steps": None})
    settings.validate()
    check_seed("seed", settings.seed, offsets=len(conditions) - 1)  # batch i is sampled with seed + i
    folder.mkdir(parents=True, exist_ok=True)
    with _RankLock(folder, rank):
        _cleanup_temporaries(folder, rank)
        index = open_dataset(folder, generator, settings, storage, rank, conditions)
        _repair_shards(folder, index, rank, verify, say)
        merged = load_index(folder)
        done = {shard_batch_index(e) for e in merged["shards"]}
        total = len(conditions)
        _check_recorded_sizes(folder, merged["shards"], conditions, 2 if settings.cfg_scale != 0 else 1)
        todo = [i for i in range(total) if i % world_size == rank and i not in done]
        plan = estimate_recording(generator, conditions, settings, storage, [i for i in range(total) if i not in done])
        free = free_disk_bytes(folder)
        say(f"{folder}: {len(done)} of {total} batches recorded; rank {rank}/{world_size} records {len(todo)} batches. "
            f"Estimate: {plan['bytes_per_trajectory']:,} bytes per trajectory ({settings.steps} steps x "
            f"{plan['sequence']} x {generator.feature_dim} x {storage}), {plan['trajectories']:,} trajectories "
            f"left in all ranks = {human_bytes(plan['bytes'])}; {human_bytes(free)} free")
        if check_disk and plan["bytes"] > 0 and plan["bytes"] * 1.02 + (64 << 20) > free:
            raise ShortcutError(f"not enough disk space in {folder}: the recording needs about "
                                f"{human_bytes(plan['bytes'])} more but only {human_bytes(free)} is free; free "
                                "space, record fewer trajectories, or use --storage fp16/bf16 (or fit --online)")
        for batch_index in todo:
            entry = _record_batch(generator, folder, conditions[batch_index], settings, storage, rank, batch_index,
                                  callback)
            index["shards"].append(entry)
            index["trajectories"] += entry["trajectories"]
            index["bytes"] += entry["bytes"]
            _write_index(folder, index, rank)
    return load_index(folder)


def _repair_shards(folder: Path, index: dict, rank: int, verify: bool, say: Callable[[str], None]) -> None:
    """This rank's shards: drop entries whose file is gone or damaged (setting the file aside), adopt whole shards
    a killed run renamed into place but had not listed yet; rewrites the rank's index when anything changed."""
    changed = False
    kept = []
    for entry in index["shards"]:
        problem = check_shard(folder / entry["file"], entry, verify=verify)
        if problem is None:
            kept.append(entry)
            continue
        changed = True
        path = folder / entry["file"]
        where = f"; moved to {_set_aside(path).name}" if path.exists() else ""
        say(f"shard {entry['file']}: {problem}{where}; batch {shard_batch_index(entry)} will be recorded again")
    listed = {e["file"] for e in kept}
    for path in sorted(folder.glob(f"shard-r{rank:02d}-*.safetensors")):
        match = SHARD_PATTERN.search(path.name)
        if path.name in listed or not match:
            continue
        problem = check_shard(path)
        if problem is not None:
            say(f"shard {path.name}: {problem}; moved to {_set_aside(path).name}")
            continue
        with safe_open(str(path), framework="pt") as handle:
            count = len(json.loads(handle.metadata()["items"]))
        kept.append(_shard_entry(folder, path.name, int(match.group(2)), count))
        changed = True
        say(f"shard {path.name}: whole but not in the index (interrupted run); adopted")
    if changed:
        kept.sort(key=shard_batch_index)
        index["shards"] = kept
        index["trajectories"] = sum(int(e["trajectories"]) for e in kept)
        index["bytes"] = sum(int(e["bytes"]) for e in kept)
        _write_index(folder, index, rank)


def _record_batch(generator: MaskedGenerator, folder: Path, condition: Condition, settings: SamplerSettings,
                  storage: str, rank: int, batch_index: int, callback) -> dict:
    """Sample batch ``batch_index`` with every step full and write its shard; returns the shard's index entry."""
    name = f"shard-r{rank:02d}-{batch_index:06d}.safetensors"
    recorder = TrajectoryRecorder(storage)
    seed = settings.seed + batch_index

    def step_callback(info: StepInfo) -> None:
        recorder(info)
        if callback is not None:
            callback(info)

    result = sample(generator, condition, SamplerSettings(**{**asdict(settings), "seed": seed}), callback=step_callback)
    tensors, items = {}, []
    for j, (item_tensors, info) in enumerate(recorder.items(result, condition, batch_index, seed)):
        tensors.update({f"{j}.{key}": value for key, value in item_tensors.items()})
        items.append(info)
    del result
    check_finite_features(tensors, f"batch {batch_index} (seed {seed})")
    save_safetensors(folder / name, tensors, {"format": TRAJECTORY_FORMAT, "items": items})
    del tensors
    return _shard_entry(folder, name, batch_index, len(items))


def dataset_summary(folder: Path) -> dict:
    """Trajectories and bytes a dataset folder holds (from its index files)."""
    index = load_index(Path(folder))
    if index is None:
        return {"trajectories": 0, "bytes": 0, "shards": 0}
    return {"trajectories": index["trajectories"], "bytes": index["bytes"], "shards": len(index["shards"]),
            "generator": index["generator"].get("generator")}


# ------------------------------------------------------------------------------------------------------------
# reading


class TrajectoryDataset:
    """Read access to a recorded folder: memory-mapped shards, one entry per trajectory.

    Every shard is checked when the dataset opens (size as indexed, readable header, all tensors listed; with
    ``verify`` also the CRC32). A damaged shard raises a ShortcutError naming it (``on_bad="error"``) or is left
    out with a warning (``on_bad="skip"``, listed in ``bad_shards``); nothing on disk is changed either way.
    Tensors are read through a small cache of open ``safe_open`` handles (memory maps): ``window`` reads only the
    steps asked for.
    """

    def __init__(self, folder: Path, on_bad: str = "error", verify: bool = False, max_open: int = 64):
        if on_bad not in ("error", "skip"):
            raise ShortcutError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
        self.folder = Path(folder)
        index = load_index(self.folder)
        if index is None:
            raise ShortcutError(f"{self.folder}: no index.json; record trajectories into it first")
        self.index = index
        self.entries: list[tuple[str, int, dict]] = []
        self.shapes: list[tuple[int, ...]] = []
        self.bad_shards: list[tuple[str, str]] = []
        self.bytes = 0
        self._handles: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._max_open = max(1, max_open)
        for shard in index["shards"]:
            path = self.folder / shard["file"]
            problem = check_shard(path, shard, verify=verify)
            if problem is None:
                try:
                    with safe_open(str(path), framework="pt") as handle:
                        items = json.loads(handle.metadata()["items"])
                        shapes = [tuple(handle.get_slice(f"{j}.features").get_shape()) for j in range(len(items))]
                except Exception as err:  # noqa: BLE001
                    problem = f"unreadable ({err})"
            if problem is not None:
                if on_bad == "error":
                    raise ShortcutError(f"trajectory shard {path.name} in {self.folder} is damaged: {problem}. "
                                        "Record it again (rerun the recorder) or skip damaged shards "
                                        "(--bad-shards skip)")
                log.warning("skipping damaged trajectory shard %s: %s", path.name, problem)
                self.bad_shards.append((shard["file"], problem))
                continue
            self.entries.extend((shard["file"], j, info) for j, info in enumerate(items))
            self.shapes.extend(shapes)
            self.bytes += int(shard["bytes"])

    def __len__(self) -> int:
        return len(self.entries)

    def _handle(self, file: str):
        with self._lock:  # a prefetch thread and the main thread (validation) may read at the same time
            handle = self._handles.get(file)
            if handle is None:
                handle = safe_open(str(self.folder / file), framework="pt")
                self._handles[file] = handle
                while len(self._handles) > self._max_open:
                    self._handles.popitem(last=False)
            else:
                self._handles.move_to_end(file)
            return handle

    def load(self, i: int) -> dict[str, torch.Tensor]:
        file, j, info = self.entries[i]
        handle = self._handle(file)
        return {key: handle.get_tensor(f"{j}.{key}") for key in ("features", "order", "codes")}

    def window(self, i: int, start: int, count: int) -> torch.Tensor:
        """Features of steps ``start .. start + count - 1`` of trajectory i [count, T, D] (storage dtype)."""
        file, j, _ = self.entries[i]
        return self._handle(file).get_slice(f"{j}.features")[start:start + count]

    def tokens(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(decode order [L], codes [L]) of trajectory i."""
        file, j, _ = self.entries[i]
        handle = self._handle(file)
        return handle.get_tensor(f"{j}.order"), handle.get_tensor(f"{j}.codes")

    def info(self, i: int) -> dict:
        return self.entries[i][2]

    def describe(self, i: int) -> str:
        """Where trajectory i is stored, for messages: shard file and position in it."""
        file, j, _ = self.entries[i]
        return f"shard {self.folder / file} (trajectory {j})"

    def close(self) -> None:
        self._handles.clear()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(self)):
            yield self.load(i)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
