"""Writing results so that nothing is lost: checked before the work, written atomically, never replaced silently.

* ``check_output_file`` / ``check_output_folder`` run before any work: the place must be writable (the folder
  exists and takes a file, or can be created), the name must be usable (not a folder, a known extension), and an
  existing output is refused unless the user passed ``--force`` (or resumes).
* ``atomic_write`` writes to a hidden temporary file beside the target and renames it into place: a killed
  process leaves the previous file as it was. Temporary files are removed on every exit path the process sees;
  those of a process killed with SIGKILL are removed by the next write to the same target.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from .generator import ShortcutError

TEMP_SUFFIX = ".tmp"


def _temp_pattern(path: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^.]+{re.escape(TEMP_SUFFIX)}$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Temporary files of ``path`` left by processes that no longer run (killed mid-write); returns them."""
    path = Path(path)
    pattern = _temp_pattern(path)
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _alive(int(match.group(1))):
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename into place, so a killed process never leaves a partial file.

    The temporary file is ``.<name>.<pid>.<random>.tmp`` beside the target (same file system, so the rename is
    atomic); it is removed if ``write`` fails, and left-overs of dead processes are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable_folder(folder: Path, flag: str = "--out", target: Optional[Path] = None) -> None:
    """The folder exists and takes new files, or can be created (its nearest existing parent takes them).
    ``target`` is the path the user gave (the message names it), default the folder."""
    folder = Path(folder)
    shown = target if target is not None else folder
    existing = _nearest_existing(folder.absolute())
    if not existing.is_dir():
        raise ShortcutError(f"{flag} {shown}: {existing} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
    except OSError as err:
        missing = "" if existing == folder.absolute() else f" (it would create {folder} inside it)"
        raise ShortcutError(f"{flag} {shown}: cannot write into {existing}{missing}: "
                            f"{err.strerror or err}; choose a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path, force: bool = False, suffixes: Optional[Sequence[str]] = None,
                      flag: str = "--out", force_flag: str = "--force") -> Path:
    """Before any work: ``path`` can be written (see ``check_writable_folder``), is not a folder, has one of
    ``suffixes``, and does not exist unless ``force``."""
    path = Path(path).expanduser()
    if path.name in ("", ".", ".."):
        raise ShortcutError(f"{flag} {str(path)!r} is not a file name; give a path such as out.png")
    if path.is_dir():
        raise ShortcutError(f"{flag} {path} is an existing folder; give a file path inside it, e.g. {path / 'out'}"
                            + (suffixes[0] if suffixes else ""))
    if suffixes and path.suffix.lower() not in suffixes:
        raise ShortcutError(f"{flag} {path}: the extension {path.suffix or '(none)'!r} is not allowed; use "
                            f"{', '.join(suffixes)}")
    check_writable_folder(path.parent, flag, path)
    if path.exists() and not force:
        raise ShortcutError(f"{flag} {path} exists; pass {force_flag} to replace it, or choose another path")
    return path


def check_output_folder(folder, names: Iterable[str], force: bool = False, flag: str = "--out",
                        force_flag: str = "--force") -> Path:
    """Before any work: ``folder`` is (or can become) a writable folder and holds none of ``names`` unless
    ``force``."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ShortcutError(f"{flag} {folder} is a file; give a folder path")
    check_writable_folder(folder, flag)
    present = [name for name in names if (folder / name).exists()]
    if present and not force:
        raise ShortcutError(f"{flag} {folder} already holds {', '.join(present)}; pass {force_flag} to replace "
                            "them, or choose another folder")
    return folder


def image_suffixes() -> tuple[str, ...]:
    """File extensions Pillow can write, PNG first."""
    from PIL import Image
    Image.init()
    saveable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    preferred = [".png", ".jpg", ".jpeg", ".webp"]
    return tuple([s for s in preferred if s in saveable] + sorted(saveable - set(preferred)))


def save_image(array, path: Path) -> None:
    """One uint8 [H, W, 3] array to an image file, atomically (format from the extension)."""
    from PIL import Image
    path = Path(path)
    image = Image.fromarray(array)
    fmt = Image.registered_extensions()[path.suffix.lower()]
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt))
