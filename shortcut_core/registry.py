"""Finding and loading generators by name or path: the embedded demo, our safetensors files, and the formats
backends register (official checkpoints, Hugging Face folders)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from .generator import GeneratorCard, MaskedGenerator, ShortcutError
from .backends import PATH_DESCRIBERS, PATH_LOADERS
from .dtypes import resolve_device, resolve_dtype
from .files import load_tensors, read_metadata, save_safetensors
from .validation import check_finite_tensors
from .weights import GENERATOR_FORMAT

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_GENERATOR = ASSETS / "demo_generator.safetensors"
DEMO_SHORTCUT = ASSETS / "demo_shortcut.safetensors"
BUILTIN_GENERATORS = {"demo": DEMO_GENERATOR}
BUILTIN_SHORTCUTS = {"demo": DEMO_SHORTCUT}


def _backend_from_metadata(tensors: dict, metadata: dict) -> MaskedGenerator:
    backend = metadata.get("backend")
    if backend == "maskgit":
        from .backends.maskgit import generator_from_tensors
        return generator_from_tensors(tensors, metadata)
    raise ShortcutError(f"unknown generator backend {backend!r} in this file; known: maskgit")


def describe_generator(name: str | Path) -> Optional[GeneratorCard]:
    """What a generator says about itself without loading weights, or None when ``name`` (a built-in name, a file
    or a folder) is not something ``load_generator`` can load as a generator (a VQ decoder, shortcut weights, a
    README). A file that cannot be read at all counts as not a generator."""
    path = BUILTIN_GENERATORS.get(str(name)) or Path(name).expanduser()
    if not path.exists():
        return None
    try:
        if path.is_file() and path.suffix == ".safetensors":
            metadata = read_metadata(path)
            if metadata.get("format") == GENERATOR_FORMAT:
                return _card_from_metadata(metadata)
        for describe in PATH_DESCRIBERS:
            card = describe(path)
            if card is not None:
                return card
    except (ShortcutError, OSError, KeyError, StopIteration) as err:
        log.debug("%s: not described as a generator (%s)", path, err)
    return None


def _card_from_metadata(metadata: dict) -> GeneratorCard:
    names = metadata.get("class_names") or []
    if not names:
        names = [str(i) for i in range(int(metadata.get("maskgit_config", {}).get("nclass", 0)))]
    return GeneratorCard("class", tuple(str(n) for n in names), dict(metadata.get("default_settings") or {}))


def save_generator(path: Path, generator: MaskedGenerator) -> None:
    """Our generator format: safetensors with the backend, identity and configs in the metadata."""
    from .backends import maskgit
    if not isinstance(generator, maskgit.MaskGITGenerator):
        raise ShortcutError(f"saving is supported for MaskGIT-architecture generators, not {type(generator).__name__}")
    metadata = {"format": GENERATOR_FORMAT, "format_version": "1", **maskgit.generator_metadata(generator)}
    save_safetensors(path, maskgit.generator_tensors(generator), metadata)


def load_generator(name: str, device: str | torch.device = "auto", dtype: str = "auto") -> MaskedGenerator:
    """A generator by built-in name ('demo') or by path, moved to ``device`` and cast to ``dtype``.

    The VQ decoder stays in float32 whatever ``dtype`` is, as the reference pipelines keep it.
    """
    device = resolve_device(str(device))
    torch_dtype = resolve_dtype(dtype, device)
    path = BUILTIN_GENERATORS.get(name)
    if path is not None and not path.exists():
        raise ShortcutError(f"the built-in generator {name!r} is missing ({path}); rebuild it with "
                            "train/train_demo.py (see README) or reinstall the pack")
    if path is None:
        path = Path(name).expanduser()
        if not path.exists():
            raise ShortcutError(f"unknown generator {name!r}: use one of {', '.join(BUILTIN_GENERATORS)} "
                                "or the path of a generator file or folder")
    generator = None
    if path.is_file() and path.suffix == ".safetensors" and read_metadata(path).get("format") == GENERATOR_FORMAT:
        generator = _backend_from_metadata(load_tensors(path), read_metadata(path))
    else:
        for loader in PATH_LOADERS:
            generator = loader(path, device, torch_dtype)
            if generator is not None:
                break
    if generator is None:
        raise ShortcutError(f"{path}: not a generator this pack can load (expected a {GENERATOR_FORMAT!r} "
                            "safetensors file, an official checkpoint or a model folder of a supported backend)")
    check_finite_tensors(generator.state_dict().items(), f"generator {path}")
    generator.eval().requires_grad_(False)
    generator.to(device=device)
    generator.cast(torch_dtype)
    return generator


def shortcut_path(name: str) -> Path:
    return BUILTIN_SHORTCUTS.get(name) or Path(name).expanduser()
