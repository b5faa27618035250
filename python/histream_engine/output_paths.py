"""Output paths checked before any model work: the nearest existing parent is a folder, the path is not a folder,
the suffix is the one asked for, and the place is writable; each refusal carries the OS's own message."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    pass


def check_output_file(path, suffixes: tuple[str, ...] = (), what: str = "output", make_parents: bool = True) -> Path:
    """Returns ``path`` as a Path once a file can be created there (missing parent folders are made by the writer,
    so the nearest existing one is what must be a writable folder); ``make_parents=False`` for writers that make none."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a directory; name a file inside it, e.g. {path / ('out' + (suffixes[0] if suffixes else ''))}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputPathError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if not make_parents and not path.parent.exists():
        raise OutputPathError(f"cannot write {what} {path}: the folder {path.parent} does not exist; create it first")
    _check_writable_folder(path.parent, path, what)
    return path


def check_output_folder(path, what: str = "output folder") -> Path:
    """Returns ``path`` as a Path once a folder can be written there: an existing folder, or a new one under the
    nearest existing parent, which must be a writable folder. An existing file is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file; name a folder (made if it does not exist)")
    _check_writable_folder(path, path, what)
    return path


def _check_writable_folder(start: Path, path: Path, what: str) -> None:
    """The nearest existing one of ``start`` and its parents is a folder where this process can create a file."""
    folder = next(p for p in (start, *start.parents) if p.exists())
    if not folder.is_dir():
        raise OutputPathError(f"{what} {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"cannot write {what} {path}: {exc.strerror or exc} (in {folder})") from exc
