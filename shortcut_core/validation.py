"""Checking what users give before any work starts.

Every entry point (``python -m shortcut_core``, the ``train/`` scripts, the Python API, the nodes) checks its
inputs with these helpers before it loads a model or samples anything. A refused value raises ``ShortcutError``
with one line that names the value, says what is allowed and how to fix it. The command lines print that line
and exit with status 2 (a usage error); an unexpected failure prints one line too and exits with status 1, with
the traceback only when ``--debug`` or ``SHORTCUT_DEBUG=1`` asks for it.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Callable, Iterable, Optional, Sequence

import torch

from .files import available_bytes
from .generator import ShortcutError

log = logging.getLogger(__name__)

MAX_SEED = 2 ** 64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
DEBUG_ENV = "SHORTCUT_DEBUG"
USAGE_ERROR = 2
FAILURE = 1
INTERRUPTED = 130


# ------------------------------------------------------------------------------------------------ numbers

def allowed_range(low=None, high=None, low_open: bool = False, high_open: bool = False,
                  integer: bool = False) -> str:
    """'a finite number >= 0', 'a whole number between 1 and 256', ... for error messages."""
    kind = "a whole number" if integer else "a finite number"
    if low is not None and high is not None and not (low_open or high_open):
        return f"{kind} between {low} and {high}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return kind + (" " + " and ".join(parts) if parts else "")


def number_problem(value, low=None, high=None, low_open: bool = False, high_open: bool = False,
                   integer: bool = False) -> Optional[str]:
    """None when ``value`` is allowed, else what is allowed ('a finite number >= 0')."""
    allowed = allowed_range(low, high, low_open, high_open, integer)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return allowed
    if integer and not isinstance(value, int):
        return allowed
    if not math.isfinite(value):
        return allowed
    if low is not None and (value <= low if low_open else value < low):
        return allowed
    if high is not None and (value >= high if high_open else value > high):
        return allowed
    return None


def check_number(name: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False,
                 integer: bool = False, hint: str = ""):
    """``value`` when it is a finite number within the limits, else a ShortcutError naming ``name``."""
    problem = number_problem(value, low, high, low_open, high_open, integer)
    if problem is not None:
        raise ShortcutError(f"{name} must be {problem}, got {value!r}" + (f"; {hint}" if hint else ""))
    return value


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ShortcutError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_seed(name: str, seed, offsets: int = 0) -> int:
    """A seed torch accepts (0 .. 2^64 - 1), also after adding ``offsets`` (batch i uses seed + i)."""
    high = MAX_SEED - max(offsets, 0)
    hint = f"batch i uses seed + i, up to + {offsets}" if offsets else "seeds are 64-bit"
    return check_number(name, seed, 0, high, integer=True, hint=hint)


def check_finite_tensors(tensors: Iterable[tuple[str, torch.Tensor]], where: str, chunk: int = 1 << 24) -> None:
    """Refuse floating-point tensors holding NaN or inf, naming the first one (checked in chunks, so a large
    embedding never needs a second copy of itself in memory)."""
    for name, tensor in tensors:
        if not torch.is_tensor(tensor) or tensor.is_meta or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), chunk):
            if not bool(torch.isfinite(flat[start:start + chunk]).all()):
                bad = int((~torch.isfinite(flat[start:start + chunk])).sum())
                raise ShortcutError(f"{where}: tensor {name!r} holds {bad}+ NaN or infinite values; these weights "
                                    "are damaged or diverged in training: use another file (or refit it)")


# ------------------------------------------------------------------------------------------------ lists and labels

def parse_int_list(text: str, what: str = "list") -> list[int]:
    """'0,3,5' -> [0, 3, 5]; a ShortcutError naming the item that is not a whole number."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ShortcutError(f"{what} {text!r} is empty: give whole numbers separated by commas, e.g. 0,4,8")
    values = []
    for item in items:
        try:
            values.append(int(item))
        except ValueError:
            raise ShortcutError(f"{what} {text!r}: {item!r} is not a whole number; give whole numbers separated "
                                "by commas, e.g. 0,4,8") from None
    return values


def parse_class_labels(text: Optional[str], class_names: Sequence[str], num_classes: int,
                       what: str = "--classes") -> Optional[list[int]]:
    """Class labels from '3', '1,4,7' or class names ('circle,star'); None when ``text`` is None.

    Every label is checked against the generator's ``num_classes``; an empty text is refused (leave the option
    out for the default)."""
    if text is None:
        return None
    if num_classes < 1:
        raise ShortcutError(f"{what} {text!r}: this generator is not class-conditional; give a prompt instead")
    names = {str(n).lower(): i for i, n in enumerate(class_names)}
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ShortcutError(f"{what} {text!r} is empty: give class numbers 0..{num_classes - 1} or names separated "
                            "by commas, or leave the option out to cycle through all classes")
    labels = []
    for item in items:
        if item.lower() in names:
            labels.append(names[item.lower()])
            continue
        try:
            label = int(item)
        except ValueError:
            shown = ", ".join(map(str, list(class_names)[:20])) + (" ..." if len(class_names) > 20 else "")
            raise ShortcutError(f"{what}: {item!r} is neither a class number (0..{num_classes - 1}) nor a class name "
                                f"of this generator" + (f" ({shown})" if shown else "")) from None
        if not 0 <= label < num_classes:
            raise ShortcutError(f"{what}: class label {label} is out of range: allowed 0..{num_classes - 1}")
        labels.append(label)
    return labels


# ------------------------------------------------------------------------------------------------ a sampling run

def check_sample_inputs(generator, condition, shortcut=None) -> None:
    """What ``sample`` needs beyond its settings: a condition of the generator's kind, and shortcut weights of
    the generator's feature size and architecture (weights of another model would fail mid-run or draw noise)."""
    if generator.condition_kind == "class" and condition.prompts:
        raise ShortcutError(f"generator {generator.identity!r} is class-conditional and ignores prompts "
                            f"(got {list(condition.prompts)[:2]!r}); give class labels instead")
    if generator.condition_kind == "text" and condition.labels is not None:
        raise ShortcutError(f"generator {generator.identity!r} is text-to-image and ignores class labels "
                            f"(got {list(condition.labels)[:4]!r}); give prompts instead")
    if shortcut is None:
        return
    config = shortcut.config
    if config.feature_dim != generator.feature_dim:
        raise ShortcutError(f"these shortcut weights expect features of size {config.feature_dim}, but generator "
                            f"{generator.identity!r} has {generator.feature_dim}: load the weights fitted for it")
    if config.arch != generator.shortcut_arch:
        raise ShortcutError(f"shortcut architecture {config.arch!r} does not fit generator {generator.identity!r} "
                            f"(needs {generator.shortcut_arch!r}): load the weights fitted for it")


# ------------------------------------------------------------------------------------------------ devices and memory

def check_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, refused when this machine does not have it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ShortcutError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ShortcutError(f"device {name!r}: this torch build or machine has no CUDA; use --device cpu "
                                "(or auto), or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ShortcutError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ShortcutError(f"device {name!r}: MPS is not available here; use --device cpu (or auto)")
    elif device.type != "cpu":
        raise ShortcutError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def sampling_bytes(generator, rows: int) -> int:
    """A lower bound of the memory one sampling step holds for ``rows`` rows (images x CFG branches): float32
    logits over the codebook with the sampler's few same-sized temporaries, and the features of the step with
    the transformer's activations (a few copies of the feature width). Weights are already loaded."""
    tokens, codes, width = generator.num_tokens, generator.codebook_size, generator.feature_dim
    per_row = 4 * (4 * tokens * codes + 8 * (tokens + 1) * width)
    return rows * per_row


def check_batch_memory(generator, batch: int, guidance: bool, what: str = "--batch") -> None:
    """Refuse a batch whose sampling step alone cannot fit in the memory free now (estimate and refuse)."""
    free = available_bytes(generator.device)
    if free is None:
        return
    rows = batch * (2 if guidance else 1)
    need = sampling_bytes(generator, rows)
    if need > free:
        fit = max(1, int(batch * free / need) // 2)
        raise ShortcutError(f"{what} {batch} needs at least {need / 2**30:.1f} GiB for one sampling step on "
                            f"{generator.device} ({rows} rows of {generator.num_tokens} tokens x "
                            f"{generator.codebook_size} codes), but only {free / 2**30:.1f} GiB is free: "
                            f"lower {what} (about {fit} fits)")


# ------------------------------------------------------------------------------------------------ command lines

class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad flag raises ShortcutError (printed by ``run_command``, status 2)
    instead of printing the usage block and exiting."""

    def error(self, message: str):
        raise ShortcutError(f"{message} (see {self.prog} --help)")


def _type_error(text: str, allowed: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{text!r} is not allowed: it must be {allowed}")


def arg_number(kind: type = float, low=None, high=None, low_open: bool = False, high_open: bool = False):
    """An argparse ``type`` that parses a number and checks it is finite and within the limits."""
    integer = kind is int
    allowed = allowed_range(low, high, low_open, high_open, integer)

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise _type_error(text, allowed) from None
        if number_problem(value, low, high, low_open, high_open, integer) is not None:
            raise _type_error(text, allowed)
        return value

    parse.__name__ = "whole number" if integer else "number"
    return parse


def arg_int_list(low: int = 0):
    """An argparse ``type`` for comma-separated whole numbers >= ``low``."""

    def parse(text: str) -> list[int]:
        try:
            values = parse_int_list(text, "list")
        except ShortcutError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        for value in values:
            if value < low:
                raise argparse.ArgumentTypeError(f"{text!r}: {value} is not allowed, every entry must be >= {low}")
        return values

    parse.__name__ = "list"
    return parse


def arg_device(text: str) -> str:
    """An argparse ``type`` for ``--device``: refused when this machine does not have it."""
    try:
        check_device(text)
    except ShortcutError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


arg_seed = arg_number(int, 0, MAX_SEED)
positive_int = arg_number(int, 1)
non_negative_int = arg_number(int, 0)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"print the full traceback when something fails (or set {DEBUG_ENV}=1)")


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(body: Callable[[], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a command line's ``body``: refused inputs print one line and give status 2, interruptions 130,
    unexpected failures one line and status 1 (the traceback with ``--debug`` / ``SHORTCUT_DEBUG=1``)."""
    debug = debug_requested(argv)
    try:
        return body()
    except ShortcutError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the last line of defence of a command line
        if debug:
            raise
        text = str(err).strip().splitlines()
        print(f"error: {type(err).__name__}: {text[0] if text else ''} (run again with --debug or {DEBUG_ENV}=1 "
              "for the traceback)", file=sys.stderr)
        return FAILURE
