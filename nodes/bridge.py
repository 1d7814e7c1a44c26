"""Everything the nodes need from ComfyUI, behind functions so this pack imports without ComfyUI or a GPU.

ComfyUI's ``comfy.model_management`` refuses to import outside ``main.py`` on a machine without an accelerator,
so no ComfyUI module is imported at module level here: each helper imports what it needs when called.

Also here: the model folders this pack registers, the objects that travel on the node sockets, the resolution
of a combo value to a file or folder (names that are not listed are refused), and the per-call cost ratios runs
measured on this machine.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..shortcut_core import DEMO_GENERATOR, DEMO_SHORTCUT, Condition, ShortcutError
from ..shortcut_core.files import read_metadata
from ..shortcut_core.generator import GeneratorCard
from ..shortcut_core.registry import describe_generator
from ..shortcut_core.schedules import searched_full_steps
from ..shortcut_core.weights import per_call_ratio_of, read_step_errors

log = logging.getLogger(__name__)

# Model folder keys (ComfyUI/models/<key>) and the files each lists.
GENERATOR_FOLDER = "masked_generators"
SHORTCUT_FOLDER = "shortcut"
WEIGHT_EXTENSIONS = {".safetensors", ".pth", ".pt", ".ckpt", ".bin"}
# Hugging Face model folders are generators; ComfyUI's missing-models check looks for a listed file, so their
# config files are listed in the folder too (the generator menu itself only offers what loads as a generator).
MARKER_EXTENSIONS = {".json"}
DEMO = "demo"
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

    @property
    def fitted_ratio(self) -> Optional[float]:
        """Per-call cost relative to a base call, measured when the weights were fitted (None when not recorded)."""
        return self.weights.per_call_ratio

    def __repr__(self) -> str:
        return f"Shortcut({self.name!r} for {self.generator_identity!r})"


@dataclass(frozen=True)
class MaskedConditioning:
    """What travels on a MIGM_CONDITIONING socket: what to draw, built by a class-label or a text-prompt node.

    ``labels`` are class numbers of the generator named ``generator_identity``, cycled over the batch; empty means
    image i draws class i. Text conditioning carries the prompts and the image size (0 = the generator's own).
    """

    kind: str  # "class" or "text"
    labels: tuple[int, ...] = ()
    label_names: tuple[str, ...] = ()
    generator_identity: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    width: int = 0
    height: int = 0

    def describe(self) -> str:
        if self.kind == "text":
            return f"prompt {self.prompt[:40]!r}"
        return ", ".join(self.label_names) if self.label_names else "every class in turn"

    def condition(self, generator, batch_size: int, offset: int = 0) -> Condition:
        """The core ``Condition`` for ``batch_size`` images of ``generator``, refusing a generator it does not
        fit with a message that names the node to use instead."""
        if self.kind != generator.condition_kind:
            wanted = "Masked Text Prompt" if generator.condition_kind == "text" else "Masked Class Label"
            raise ShortcutError(f"generator {generator.identity!r} is {_kind_words(generator.condition_kind)}, but "
                                f"the conditioning is {_kind_words(self.kind)}: connect a {wanted} node to the "
                                "sampler's 'conditioning' input")
        if self.kind == "text":
            negatives = [self.negative_prompt] * batch_size if self.negative_prompt.strip() else None
            condition = Condition(prompts=[self.prompt] * batch_size, negative_prompts=negatives)
        else:
            if self.generator_identity and self.generator_identity != generator.identity:
                raise ShortcutError(f"the class label was chosen for generator {self.generator_identity!r}, but "
                                    f"the sampler uses {generator.identity!r}: connect the same Load Masked "
                                    "Generator to Masked Class Label and to the sampler")
            labels = self.labels or tuple(range(generator.num_classes))
            condition = Condition(labels=[labels[(offset + i) % len(labels)] for i in range(batch_size)])
        generator.check_condition(condition, batch_size)
        return condition


def _kind_words(kind: str) -> str:
    return "text-to-image" if kind == "text" else "class-conditional"


def _managed_class(inner: type) -> type:
    """A ``torch.nn.Module`` subclass named after the wrapped core class, so ComfyUI's log says what it loads
    ("Requested to load MaskGITGenerator")."""
    cached = _MANAGED_CLASSES.get(inner)
    if cached is None:
        cached = type(inner.__name__, (_Managed,), {"__doc__": _Managed.__doc__})
        _MANAGED_CLASSES[inner] = cached
    return cached


class _Managed(torch.nn.Module):
    """Wraps a core module for ``ModelPatcher``, which sets ``.device`` on the model it manages (the core
    generator exposes ``device`` as a read-only property). Moving the wrapper moves the wrapped module, every
    child included (a generator's VQ decoder and text encoder are children), so ComfyUI counts all of it."""

    def __init__(self, inner: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner = inner
        self.device = device


_MANAGED_CLASSES: dict[type, type] = {}


# --------------------------------------------------------------------------------------------- ComfyUI access

def folder_paths():
    import folder_paths as module  # ComfyUI's; imported on use
    return module


def model_management():
    import comfy.model_management as module
    return module


def register_model_folders() -> None:
    """Register ``models/masked_generators`` and ``models/shortcut`` with an extension filter.

    ``add_model_folder_path`` would register an EMPTY filter (README files would show), so the tuple is set
    directly, keeping paths a user added through extra_model_paths.yaml before this pack loaded.
    """
    fp = folder_paths()
    for key, wanted in ((GENERATOR_FOLDER, WEIGHT_EXTENSIONS | MARKER_EXTENSIONS), (SHORTCUT_FOLDER, WEIGHT_EXTENSIONS)):
        default = os.path.join(fp.models_dir, key)
        if key in fp.folder_names_and_paths:
            paths, extensions = fp.folder_names_and_paths[key]
            paths = list(paths)
            extensions = set(extensions) | wanted
        else:
            paths, extensions = [], set(wanted)
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


_CARDS: dict[str, tuple[str, Optional[GeneratorCard]]] = {}


def card_of(path: Path) -> Optional[GeneratorCard]:
    """``describe_generator`` for a file or folder, cached until the file (or folder) changes."""
    key = str(path)
    stamp = file_fingerprint(path)
    cached = _CARDS.get(key)
    if cached is None or cached[0] != stamp:
        cached = (stamp, describe_generator(path))
        _CARDS[key] = cached
    return cached[1]


def list_generators() -> list[str]:
    """Combo values: 'demo', then the generator files, then model folders (shown with a trailing '/').

    Only what loads as a generator is offered: VQ decoders, shortcut weights and the files inside a model
    folder (its shards, ``pretrained_maskgit/VQGAN/last.ckpt``) are not.
    """
    register_model_folders()
    fp = folder_paths()
    folders = list_model_folders()
    files = []
    for name in fp.get_filename_list(GENERATOR_FOLDER):
        if any(name.replace("\\", "/").startswith(d) for d in folders):
            continue
        if os.path.splitext(name)[1].lower() not in WEIGHT_EXTENSIONS:
            continue
        full = fp.get_full_path(GENERATOR_FOLDER, name)
        if full and card_of(Path(full)) is not None:
            files.append(name)
    return [DEMO] + files + folders


def list_model_folders() -> list[str]:
    found = []
    for base in _model_folders(GENERATOR_FOLDER):
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith(".") and card_of(Path(entry.path)) is not None:
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


def generator_card(name: str) -> GeneratorCard:
    """The card of a Load Masked Generator combo value (what the front end shows before anything runs)."""
    card = card_of(resolve_generator(name))
    if card is None:
        raise ShortcutError(f"{name!r} is not a generator this pack can load")
    return card


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
    return ModelPatcher(_managed_class(type(module))(module, current), load_device=load_device,
                        offload_device=offload_device)


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
    if handle.image_size is None:
        if width or height:
            raise ShortcutError(f"generator {handle.name!r} draws at one fixed size: set width and height to 0 "
                                "on the Masked Text Prompt node (only text-to-image generators such as "
                                "Lumina-DiMOO and aMUSEd take a size)")
        return
    generator.set_image_size(width or handle.image_size[0], height or handle.image_size[1])


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    model_management().throw_exception_if_processing_interrupted()


def progress_bar(total: int):
    import comfy.utils
    return comfy.utils.ProgressBar(total)


def file_fingerprint(path: Optional[Path]) -> str:
    """Changes when the file (or folder) changes, so ComfyUI reloads instead of reusing a cached model."""
    if path is None:
        return ""
    try:
        stat = path.stat()
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"
    except OSError:
        return str(path)


# --------------------------------------------------------------------------------------------- measured speed

def fitted_ratio(path: Path) -> Optional[float]:
    """The per-call cost ratio (shortcut call / base call) stored in the weights' metadata when they were fitted."""
    if path.suffix != ".safetensors":
        return None
    try:
        return per_call_ratio_of(read_metadata(path))
    except ShortcutError:
        return None


# (shortcut combo value, generator combo value) -> the last run's measured ratio on this machine
_MEASURED: dict[tuple[str, str], dict] = {}


def record_measured_ratio(shortcut: str, generator: str, ratio: float, device: str) -> None:
    _MEASURED[(shortcut, generator)] = {"ratio": float(ratio), "device": device, "time": time.time()}


_TABLES: dict[str, tuple[str, dict]] = {}


def step_error_tables(path: Path) -> dict:
    """The step-error tables (steps -> [N, N]) stored in shortcut weights, read without the network."""
    if path.suffix != ".safetensors":
        return {}
    stamp = file_fingerprint(path)
    cached = _TABLES.get(str(path))
    if cached is None or cached[0] != stamp:
        cached = (stamp, read_step_errors(path))
        _TABLES[str(path)] = cached
    return cached[1]


def shortcut_speed(shortcut: str, generator: Optional[str] = None, steps: Optional[int] = None,
                   budget: Optional[int] = None) -> dict:
    """What the front end needs for the strip of weights ``shortcut`` on ``generator``: the per-call ratio the
    last run measured on this machine (with that generator when given), the one stored at fit time, and the
    searched full steps for ``steps`` and ``budget`` when the weights carry a step-error table for ``steps``."""
    measured = _MEASURED.get((shortcut, generator)) if generator else None
    if measured is None:
        same = [v for (s, _), v in _MEASURED.items() if s == shortcut]
        measured = max(same, key=lambda v: v["time"]) if same else None
    path = resolve_shortcut(shortcut)
    tables = step_error_tables(path)
    searched = None
    if steps is not None and budget is not None and int(steps) in tables and 1 <= int(budget) <= int(steps):
        searched = searched_full_steps(int(steps), int(budget), tables)
    return {"shortcut": shortcut, "measured": measured, "fitted_ratio": fitted_ratio(path),
            "table_steps": sorted(tables), "searched": searched}
