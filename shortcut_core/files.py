"""Reading and writing the files this pack handles, never running pickled code, and the checks made first.

* Writes that must not be lost go to a temporary file renamed into place (``atomic_write``). Safetensors headers
  are written with their metadata keys sorted, so the same tensors and metadata give the same bytes.
* Safetensors files with JSON metadata are ours; pickle checkpoints (official releases) are read with
  ``torch.load(weights_only=True)``: a file that needs code to unpickle is refused. Training metadata that
  Lightning-era checkpoints pickle (callbacks, hyper-parameters) is replaced by an inert placeholder, never
  imported or run, and the message for anything else says how to convert the file.
* Hugging Face folders: one ``<stem>.safetensors``, a sharded index, or the fp16 variant.
* Before loading or writing: the free device memory and disk space, with byte counts a person can read.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .generator import ShortcutError
from .outputs import atomic_write

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


# ------------------------------------------------------------------------------------------------------------
# writing


def write_json(path: Path, data: Any) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))


def _sort_header_metadata(path: Path) -> None:
    """Rewrite the safetensors header in place with its metadata keys sorted. The safetensors writer emits the
    metadata map in a random order per process; sorting makes the same file the same bytes on every run (same
    header length, same data: only the key order changes)."""
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        text = handle.read(length).decode("utf-8").rstrip(" ")
        header = json.loads(text)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict):
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        out = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(out) != len(text.encode("utf-8")):  # not the writer's compact form: leave the file as it is
            return
        handle.seek(8)
        handle.write(out + b" " * (length - len(out)))


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Tensors and metadata (values that are not strings are stored as JSON), atomically, byte-reproducible."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp):
        save_file(tensors, tmp, metadata=meta)
        _sort_header_metadata(Path(tmp))

    atomic_write(Path(path), write)


# ------------------------------------------------------------------------------------------------------------
# reading


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShortcutError(f"{path}: not readable JSON ({err})") from err


def read_metadata(path: Path) -> dict:
    """JSON-decoded safetensors metadata (values that are not JSON stay strings)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ShortcutError(f"{path}: not a readable safetensors file ({err})") from err
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON-decoded metadata of a safetensors file, with a ``ShortcutError`` naming a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ShortcutError(f"weights file not found: {path}")
    metadata = read_metadata(path)
    try:
        return load_file(str(path), device=str(device)), metadata
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ShortcutError(f"{path}: not a valid safetensors file, it may be truncated ({err})") from err


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from the header only."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise ShortcutError(f"{path}: not a valid safetensors file, it may be truncated ({err})") from err


def safetensors_numel(path: Path) -> int:
    return sum(math.prod(shape) for shape in safetensors_shapes(path).values())


def load_tensors(path: Path, device: str | torch.device = "cpu") -> Any:
    """What a safetensors file (a dict of tensors) or a pickle checkpoint holds, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ShortcutError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path, device)[0]
    if path.suffix in PICKLE_SUFFIXES:
        return read_pickle(path, device)
    raise ShortcutError(f"{path}: unknown weights format; expected .safetensors (preferred) or a PyTorch "
                        f"checkpoint ({', '.join(PICKLE_SUFFIXES)})")


# Globals that Lightning-era checkpoints pickle as training metadata (callbacks, hyper-parameters). They are
# resolved to ``_Inert`` (never imported, never run).
_INERT_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "numpy.")
_INERT_NAMES = {"typing.Any", "argparse.Namespace", "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath"}
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


class _Inert:
    """Stands for a pickled training-metadata object or class; accepts any arguments or state, keeps nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self) -> str:
        return "<skipped training metadata>"


def _is_inert(name: str) -> bool:
    return name in _INERT_NAMES or name.startswith(_INERT_PREFIXES)


def _torch_version() -> tuple[int, int]:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return (0, 0)


# ``safe_globals([(object, "module.Name")])`` (a placeholder registered under a given name) exists from torch 2.6.
_NAMED_STUBS = _torch_version() >= (2, 6)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _refusal(path: Path, names: Sequence[str]) -> ShortcutError:
    shown = ", ".join(sorted(names)[:5]) or "unknown"
    return ShortcutError(
        f"{path}: refused, this checkpoint needs code to unpickle (it references {shown}). Only plain tensors, "
        "dicts and known training metadata are loaded from pickles. If you trust the file, convert it to "
        "safetensors in a separate trusted environment (torch.load, then safetensors.torch.save_file).")


def _load_pickle(path: Path, inert: Sequence[str], mmap: bool, device) -> Any:
    stubs = [(_Inert, name) for name in inert]
    with torch.serialization.safe_globals(stubs):
        return torch.load(str(path), map_location=device, weights_only=True, mmap=mmap)


def _unreadable(path: Path, detail: str) -> ShortcutError:
    return ShortcutError(f"{path}: could not read this PyTorch checkpoint, it may be truncated or corrupted ({detail})")


def read_pickle(path: Path, device: str | torch.device = "cpu") -> Any:
    """The object of a ``torch.save`` / Lightning file, read with ``weights_only=True`` (never runs its code).

    Zip checkpoints are memory-mapped: tensors that are never used (optimizer state) are never read from disk.
    Training-metadata globals of Lightning checkpoints become inert placeholders; any other global is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ShortcutError(f"weights file not found: {path}")
    try:
        mmap = _is_zip(path)
    except OSError as err:
        raise ShortcutError(f"{path}: cannot be read ({err})") from err
    inert: list[str] = []
    for _ in range(32):  # one retry per newly discovered metadata global (legacy files name one at a time)
        try:
            return _load_pickle(path, inert, mmap, device)
        except pickle.UnpicklingError as err:
            names = _unsafe_globals(path, str(err), mmap)
            names = [n for n in names if n not in inert]
            unsafe = [n for n in names if not _is_inert(n)]
            if unsafe or not names:
                raise _refusal(path, unsafe or names) from None
            if not _NAMED_STUBS:
                raise ShortcutError(
                    f"{path}: holds pickled training metadata ({', '.join(sorted(names)[:3])}); skipping it without "
                    f"running code needs torch >= 2.6 (this is {torch.__version__}). Upgrade torch, or convert the "
                    "file once with a newer torch: python -m shortcut_core convert SRC DST.safetensors") from None
            log.info("%s: skipping pickled training metadata %s", path.name, ", ".join(sorted(names)))
            inert.extend(names)
        except (ShortcutError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - zip/pickle/IO errors of a damaged file, whatever their type
            raise _unreadable(path, str(err).splitlines()[0] if str(err) else type(err).__name__) from err
    raise ShortcutError(f"{path}: too many unknown pickled objects; convert it to safetensors in a trusted environment")


def _unsafe_globals(path: Path, message: str, mmap: bool) -> list[str]:
    """The globals an unpickling error is about; a ShortcutError when the error is not about globals."""
    if "GLOBAL" not in message and "global" not in message:
        lines = [line.strip() for line in message.splitlines() if line.strip()] or ["unpickling failed"]
        detail = next((line for line in lines if "Unsupported" in line),
                      next((line for line in lines if "rror" in line), lines[0]))
        raise _unreadable(path, detail)
    if mmap:
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # noqa: BLE001 - fall back to the name in the message
            pass
    return _GLOBAL_IN_MESSAGE.findall(message)


# ------------------------------------------------------------------------------------------------------------
# Hugging Face folders


def safetensors_files(folder: Path, stem: str = "model") -> list[Path]:
    """The safetensors files of one model in a folder: ``<stem>.safetensors``, the shards listed by
    ``<stem>.safetensors.index.json``, or (failing both) every ``*.safetensors`` there. Pickles are refused."""
    folder = Path(folder)
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        files = [folder / n for n in sorted(set(read_json(index).get("weight_map", {}).values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ShortcutError(f"{folder}: shards listed in {index.name} are missing: {', '.join(missing[:5])} "
                                "(download the whole folder)")
        return files
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    if any(folder.glob("*.bin")):
        raise ShortcutError(f"{folder}: only pickle (.bin) weights found; this loader reads safetensors only")
    raise ShortcutError(f"{folder}: no {stem}.safetensors or {stem}.safetensors.index.json found")


def weight_variant(folder: Path, stem: str) -> Optional[str]:
    """None for ``{stem}.safetensors`` (or a sharded index), "fp16" when only ``{stem}.fp16.safetensors`` is there."""
    folder = Path(folder)
    if (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}.safetensors.index.json").is_file():
        return None
    if (folder / f"{stem}.fp16.safetensors").is_file() or (folder / f"{stem}.safetensors.index.fp16.json").is_file():
        return "fp16"
    if any(folder.glob("*.bin")):
        raise ShortcutError(f"{folder}: only pickle (.bin) weights found; this loader reads safetensors only "
                            f"(download {stem}.safetensors or {stem}.fp16.safetensors)")
    raise ShortcutError(f"{folder}: no {stem}.safetensors or {stem}.fp16.safetensors; download the whole subfolder")


# ------------------------------------------------------------------------------------------------------------
# memory and disk


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def human_bytes(n: float) -> str:
    """Decimal units (1 KB = 1000 B), as disks are sold."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"


def gib(n: float) -> str:
    """Binary gibibytes, as memory is counted."""
    return f"{n / 2 ** 30:.2f} GiB"


def available_ram() -> Optional[int]:
    """Bytes of RAM available (MemAvailable on Linux), or None when unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: torch.device) -> Optional[int]:
    """Free bytes where tensors of ``device`` live: on a GPU what the driver has free plus what torch's caching
    allocator holds unused; else the RAM available (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + int(cached)
    return available_ram()


def check_memory(required: int, device: torch.device, what: str = "the model", available: Optional[int] = None) -> None:
    """Refuse, with the numbers, when ``device`` cannot hold ``required`` bytes."""
    device = torch.device(device)
    free = available if available is not None else available_bytes(device)
    if free is None:
        log.warning("cannot tell how much memory %s has; %s needs %s", device, what, gib(required))
        return
    if required > free:
        place = "free GPU memory" if device.type == "cuda" else "available RAM"
        raise ShortcutError(f"{what} needs {gib(required)} on {device} but only {gib(free)} of {place} is left. "
                            "Use a device with more memory, or a smaller dtype (--dtype bf16 halves fp32), "
                            "or close other programs.")


def free_disk_bytes(folder: Path) -> int:
    """Free space on the disk that holds ``folder`` (or would, once created)."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free
