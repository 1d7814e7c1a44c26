"""Everything the nodes need from ComfyUI, behind functions so this pack imports without ComfyUI or a GPU.

ComfyUI's ``comfy.model_management`` refuses to import outside ``main.py`` on a machine without an accelerator,
so no ComfyUI module is imported at module level here: each helper imports what it needs when called.

Also here: the model folders this pack registers, the objects that travel on the node sockets, and the
resolution of a combo value to a file or folder (names that are not listed are refused).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..shortcut_core import DEMO_GENERATOR, DEMO_SHORTCUT, ShortcutError
from ..shortcut_core.files import read_metadata
from ..shortcut_core.weights import GENERATOR_FORMAT

# Model folder keys (ComfyUI/models/<key>) and the files each lists.
GENERATOR_FOLDER = "masked_generators"
SHORTCUT_FOLDER = "shortcut"
WEIGHT_EXTENSIONS = {".safetensors", ".pth", ".pt", ".ckpt", ".bin"}
DEMO = "demo"
# A sub-folder of masked_generators holding one of these is offered as a model folder (Hugging Face layout).
MODEL_FOLDER_MARKERS = ("config.json", "model_index.json")
FOLDER_SUFFIX = "/"

CATEGORY = "sampling/shortcut"


# --------------------------------------------------------------------------------------------- socket values

@dataclass
class GeneratorHandle:
    """What travels on a MASKED_GENERATOR socket: the core generator and ComfyUI's handle on it."""

    generator: Any  # shortcut_core.MaskedGenerator
    patcher: Any  # comfy.model_patcher.ModelPatcher
    name: str
    load_device: torch.device
    offload_device: torch.device
    # (width, height) in px the generator had when loaded, for generators with a variable size; else None.
    image_size: Optional[tuple[int, int]] = None

    def __repr__(self) -> str:  # shown by ComfyUI in error reports
        return f"MaskedGenerator({self.name!r}, {self.generator.identity!r})"


@dataclass
class ShortcutHandle:
    """What travels on a MIGM_SHORTCUT socket: the shortcut weights, checked against one generator."""

    weights: Any  # shortcut_core.ShortcutWeights
    patcher: Any
    name: str
    generator_identity: str
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Shortcut({self.name!r} for {self.generator_identity!r})"


class _Managed(torch.nn.Module):
    """Wraps a core module for ``ModelPatcher``, which sets ``.device`` on the model it manages (the core
    generator exposes ``device`` as a read-only property). Moving the wrapper moves the wrapped module."""

    def __init__(self, inner: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner = inner
        self.device = device


# --------------------------------------------------------------------------------------------- ComfyUI access

def folder_paths():
    import folder_paths as module  # ComfyUI's; imported on use
    return module


def model_management():
    import comfy.model_management as module
    return module


def register_model_folders() -> None:
    """Register ``models/masked_generators`` and ``models/shortcut`` with a weights-only extension filter.

    ``add_model_folder_path`` would register an EMPTY filter (README files would show), so the tuple is set
    directly, keeping paths a user added through extra_model_paths.yaml before this pack loaded.
    """
    fp = folder_paths()
    for key in (GENERATOR_FOLDER, SHORTCUT_FOLDER):
        default = os.path.join(fp.models_dir, key)
        if key in fp.folder_names_and_paths:
            paths, extensions = fp.folder_names_and_paths[key]
            paths = list(paths)
            extensions = set(extensions) | WEIGHT_EXTENSIONS
        else:
            paths, extensions = [], set(WEIGHT_EXTENSIONS)
        if default not in paths:
            paths.append(default)
        fp.folder_names_and_paths[key] = (paths, extensions)
        try:
            os.makedirs(default, exist_ok=True)  # so users see where the files go
        except OSError:
            pass


def _model_folders(key: str) -> list[str]:
    register_model_folders()
    return list(folder_paths().get_folder_paths(key))


def list_generators() -> list[str]:
    """Combo values: 'demo', then generator files, then model folders (shown with a trailing '/')."""
    register_model_folders()
    folders = list_model_folders()
    files = [f for f in folder_paths().get_filename_list(GENERATOR_FOLDER)
             if not any(f.replace("\\", "/").startswith(d) for d in folders)]
    return [DEMO] + files + folders


def list_model_folders() -> list[str]:
    found = []
    for base in _model_folders(GENERATOR_FOLDER):
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith(".") and any(
                    os.path.isfile(os.path.join(entry.path, m)) for m in MODEL_FOLDER_MARKERS):
                found.append(entry.name + FOLDER_SUFFIX)
    return found


def list_shortcuts() -> list[str]:
    register_model_folders()
    return [DEMO] + list(folder_paths().get_filename_list(SHORTCUT_FOLDER))


def resolve_generator(name: str) -> Path:
    """The file or folder behind a Load Masked Generator combo value; anything not listed is refused."""
    if name == DEMO:
        if not DEMO_GENERATOR.is_file():
            raise ShortcutError(f"the embedded demo generator is missing ({DEMO_GENERATOR}); reinstall the pack")
        return DEMO_GENERATOR
    if name.endswith(FOLDER_SUFFIX):
        folder = name[: -len(FOLDER_SUFFIX)]
        if folder and os.sep not in folder and "/" not in folder and folder not in (".", "..") \
                and name in list_model_folders():
            for base in _model_folders(GENERATOR_FOLDER):
                candidate = Path(base) / folder
                if candidate.is_dir():
                    return candidate
        raise ShortcutError(_not_listed("generator folder", name, GENERATOR_FOLDER, list_generators()))
    return _resolve_file(GENERATOR_FOLDER, name, "generator", list_generators())


def resolve_shortcut(name: str) -> Path:
    if name == DEMO:
        if not DEMO_SHORTCUT.is_file():
            raise ShortcutError(f"the embedded demo shortcut weights are missing ({DEMO_SHORTCUT}); reinstall the pack")
        return DEMO_SHORTCUT
    return _resolve_file(SHORTCUT_FOLDER, name, "shortcut weights", list_shortcuts())


def _resolve_file(key: str, name: str, what: str, listed: list[str]) -> Path:
    fp = folder_paths()
    if name not in listed:  # also refuses absolute paths and '..' that get_full_path would normalise away
        raise ShortcutError(_not_listed(what, name, key, listed))
    try:
        return Path(fp.get_full_path_or_raise(key, name))
    except FileNotFoundError as err:
        raise ShortcutError(_not_listed(what, name, key, listed)) from err


def _not_listed(what: str, name: str, key: str, listed: list[str]) -> str:
    folders = ", ".join(_model_folders(key)) or f"models/{key}"
    shown = ", ".join(listed[:12]) + (" ..." if len(listed) > 12 else "")
    return (f"{what} {name!r} is not in the model folder '{key}' ({folders}). Put the file there and press "
            f"Refresh (R) in ComfyUI, or pick one of: {shown}")


def output_directory() -> Path:
    return Path(folder_paths().get_output_directory())


def devices(choice: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) for the loader's device widget, from ComfyUI's model management."""
    if choice == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    mm = model_management()
    if choice == "auto":
        return mm.get_torch_device(), mm.unet_offload_device()
    try:
        return torch.device(choice), mm.unet_offload_device()
    except RuntimeError as err:
        raise ShortcutError(f"device must be auto, cpu or cuda:N, got {choice!r}") from err


def device_choices() -> list[str]:
    choices = ["auto", "cpu"]
    try:
        choices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver must not break the node list
        pass
    return choices


def manage(module: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
    """Hand a core module to ComfyUI's model management (it moves it to the GPU and back as memory requires)."""
    from comfy.model_patcher import ModelPatcher
    current = next(module.parameters()).device
    return ModelPatcher(_Managed(module, current), load_device=load_device, offload_device=offload_device)


def load_for_use(patchers: list) -> None:
    """Make sure every managed module sits on its load device before sampling (``load_models_gpu``).

    ``force_full_load``: these are plain torch modules, not ComfyUI ops that can run partially offloaded.
    """
    patchers = [p for p in patchers if p is not None]
    if patchers:
        model_management().load_models_gpu(patchers, force_full_load=True)


def use_image_size(handle: GeneratorHandle, width: int = 0, height: int = 0) -> None:
    """Set the size the next run draws at; 0 means the size the generator was loaded with.

    The generator object is shared by every node wired to one loader (ComfyUI caches it), so each node that
    samples sets the size it needs instead of inheriting whatever the previous node chose.
    """
    width, height = int(width or 0), int(height or 0)
    generator = handle.generator
    if handle.image_size is None or generator.image_size is None:
        if width or height:
            raise ShortcutError(f"generator {handle.name!r} draws at one fixed size: set width and height to 0 "
                                "(only text-to-image generators such as Lumina-DiMOO and aMUSEd take a size)")
        return
    generator.set_image_size(width or handle.image_size[0], height or handle.image_size[1])


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    model_management().throw_exception_if_processing_interrupted()


def progress_bar(total: int):
    import comfy.utils
    return comfy.utils.ProgressBar(total)


def class_name_options() -> list[str]:
    """Class names offered by the sampler's class combo, read from metadata only (no weights are loaded).

    The demo's names first, then those of our generator files in masked_generators, then ImageNet's (official
    MaskGIT checkpoints). Which ones apply is checked against the connected generator when the node runs.
    """
    from ..shortcut_core.imagenet_classes import IMAGENET_CLASSES
    names: list[str] = []
    paths = [DEMO_GENERATOR]
    try:
        register_model_folders()
        fp = folder_paths()
        for name in fp.get_filename_list(GENERATOR_FOLDER):
            if name.endswith(".safetensors"):
                full = fp.get_full_path(GENERATOR_FOLDER, name)
                if full:
                    paths.append(Path(full))
    except ImportError:
        pass
    for path in paths:
        names += _metadata_class_names(path)
    names += list(IMAGENET_CLASSES)
    return list(dict.fromkeys(names))


_CLASS_NAME_CACHE: dict[str, tuple[float, list[str]]] = {}


def _metadata_class_names(path: Path) -> list[str]:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return []
    cached = _CLASS_NAME_CACHE.get(str(path))
    if cached and cached[0] == mtime:
        return cached[1]
    names: list[str] = []
    try:
        meta = read_metadata(path)
        if meta.get("format") == GENERATOR_FORMAT:
            raw = meta.get("class_names") or []
            names = [str(n) for n in (json.loads(raw) if isinstance(raw, str) else raw)]
    except (ShortcutError, ValueError):
        names = []
    _CLASS_NAME_CACHE[str(path)] = (mtime, names)
    return names


def file_fingerprint(path: Optional[Path]) -> str:
    """Changes when the file (or folder) changes, so ComfyUI reloads instead of reusing a cached model."""
    if path is None:
        return ""
    try:
        stat = path.stat()
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"
    except OSError:
        return str(path)
