"""Reading and writing weights without running pickled code, and the shortcut weights file format.

Our files are safetensors with JSON metadata. Pickle checkpoints (official releases) are read with
``torch.load(weights_only=True)``, which refuses anything that would need code to rebuild.
"""
from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .generator import MaskedGenerator, ShortcutError
from .outputs import atomic_write
from .shortcut import ShortcutConfig, build_shortcut, config_from_state_dict, shortcut_class
from .validation import check_finite_tensors

log = logging.getLogger(__name__)

SHORTCUT_FORMAT = "migm-shortcut"
GENERATOR_FORMAT = "migm-generator"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
STEP_ERRORS_PREFIX = "step_errors."  # + N: measured [N, N] shortcut error table for the searched schedule


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


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


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors or pickle checkpoint, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ShortcutError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device=str(device))
        except (SafetensorError, OSError) as err:
            raise ShortcutError(f"{path}: not a valid safetensors file, it may be truncated ({err})") from err
    if path.suffix in PICKLE_SUFFIXES:
        try:
            return torch.load(str(path), map_location=device, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ShortcutError(
                f"{path}: refused, this checkpoint needs arbitrary code to unpickle ({str(err).splitlines()[0]}). "
                "Only plain tensors and dicts are loaded. If you trust the file, convert it once to safetensors "
                "in a separate trusted environment (torch.load, then safetensors.torch.save_file).") from err
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
            raise ShortcutError(f"{path}: could not read this PyTorch checkpoint, it may be truncated or "
                                f"corrupted ({err})") from err
    raise ShortcutError(f"{path}: unknown weights format; expected .safetensors (preferred) or a PyTorch "
                        f"checkpoint ({', '.join(PICKLE_SUFFIXES)})")


def save_shortcut(path: Path, network: torch.nn.Module, generator_info: dict, training: Optional[dict] = None) -> None:
    """Shortcut weights as safetensors with what is needed to rebuild and check them."""
    config: ShortcutConfig = network.config
    metadata = {"format": SHORTCUT_FORMAT, "format_version": "1", "config": config.to_dict(),
                "generator": generator_info.get("generator", ""), "feature_dim": config.feature_dim,
                "generator_info": generator_info}
    if training:
        metadata["training"] = training
    tensors = dict(network.state_dict())
    for steps, table in (getattr(network, "step_errors", None) or {}).items():
        tensors[f"{STEP_ERRORS_PREFIX}{int(steps)}"] = table.detach().float().cpu().contiguous()
    if getattr(network, "step_errors_info", None):
        metadata["step_errors"] = network.step_errors_info
    save_safetensors(path, tensors, metadata)


def load_shortcut(path: Path, generator: Optional[MaskedGenerator] = None, num_heads: Optional[int] = None,
                  check_identity: bool = True) -> torch.nn.Module:
    """Shortcut weights from our safetensors format or an official ``torch.save(state_dict)`` file.

    With ``generator`` given, refuses weights fitted for another feature size or another generator.
    Official files carry no metadata: their head count defaults to 16 (the released MaskGIT weights).
    """
    path = Path(path)
    state = load_tensors(path)
    check_finite_tensors(state.items(), str(path))
    step_errors = {int(k[len(STEP_ERRORS_PREFIX):]): state.pop(k) for k in list(state)
                   if k.startswith(STEP_ERRORS_PREFIX)}
    metadata = read_metadata(path) if path.suffix == ".safetensors" else {}
    if metadata.get("format") == SHORTCUT_FORMAT:
        config = ShortcutConfig.from_dict(metadata["config"])
        if num_heads is not None:
            config.num_heads = num_heads
        trained_for = metadata.get("generator", "")
    elif metadata.get("format") not in (None, ""):
        raise ShortcutError(f"{path}: this is a {metadata['format']!r} file, not shortcut weights "
                            f"(expected format {SHORTCUT_FORMAT!r})")
    else:
        if any(k.startswith(("model_state_dict", "state_dict")) for k in state) or "state_dict" in state:
            raise ShortcutError(f"{path}: this is a training checkpoint, not a shortcut state dict")
        arch = generator.shortcut_arch if generator is not None else "maskgit"
        if arch != "maskgit":
            config = shortcut_class(arch).config_from_state_dict(
                state, num_heads or getattr(generator, "shortcut_num_heads", None))
        else:
            try:
                config = config_from_state_dict(state, num_heads=num_heads or 16)
            except KeyError as err:
                raise ShortcutError(f"{path}: not MaskGIT-Shortcut weights (missing {err})") from err
        trained_for = ""
    if generator is not None:
        if config.feature_dim != generator.feature_dim:
            raise ShortcutError(f"{path}: these shortcut weights expect features of size {config.feature_dim}, "
                                f"but generator {generator.identity!r} has {generator.feature_dim}")
        if check_identity and trained_for and trained_for != generator.identity:
            raise ShortcutError(f"{path}: these shortcut weights were fitted for generator {trained_for!r}, "
                                f"not {generator.identity!r}")
        if config.arch != generator.shortcut_arch:
            raise ShortcutError(f"{path}: shortcut architecture {config.arch!r} does not fit generator "
                                f"{generator.identity!r} (needs {generator.shortcut_arch!r})")
    network = build_shortcut(config)
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ShortcutError(f"{path}: weights do not fit a {config.arch} shortcut of this shape: "
                            f"{str(err).splitlines()[-1].strip()}") from err
    if missing or unexpected:
        raise ShortcutError(f"{path}: weights do not fit a {config.arch} shortcut of this shape "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    network.eval()
    network.step_errors = step_errors
    network.step_errors_info = metadata.get("step_errors") if step_errors else None
    if generator is not None:
        network.to(device=generator.device, dtype=generator.dtype)
    return network
