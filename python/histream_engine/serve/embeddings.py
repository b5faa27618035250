"""The server's folder of prompt-embeddings files (``--embeds-dir``), which requests name by file name only.

Checked once at startup, so a mistyped folder stops the server with one line instead of failing every request
later. One resolver serves every request, a stream's first prompt and every switch, on either transport: a name is a
bare file name among the folder's entries, and the path it resolves to (every symlink followed) must be a readable
regular file inside the folder. A link out of the folder (to another file, to ``/etc/passwd``), a dangling link, a
folder named ``x.pt`` and an unreadable file are neither listed nor served.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SUFFIXES = (".safetensors", ".pt", ".pth")


class EmbeddingsDir:
    def __init__(self, folder: Path | str | None):
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            check_folder(self.folder)
            self.folder = self.folder.resolve()

    def names(self) -> list[str]:
        """The files a request may name (what ``/api/info`` lists)."""
        if self.folder is None:
            return []
        return sorted(entry.name for entry in self.folder.iterdir() if self._served(entry) is not None)

    def path(self, name: str) -> str:
        """The file a request names ("" for none), resolved; ValueError, with the choices, for a name this server does
        not serve."""
        if not name:
            return ""
        served = None
        if self.folder is not None and name == Path(name).name and name not in (".", ".."):
            served = self._served(self.folder / name)
        if served is None:
            raise ValueError(f"no embeddings file {name!r} on this server; it has {self.names()}")
        return str(served)

    def _served(self, entry: Path) -> Path | None:
        """``entry`` resolved, if it is a file this server serves: a suffix it reads, inside the folder once every link
        is followed, a regular file this process can read."""
        if entry.suffix not in SUFFIXES:
            return None
        try:
            resolved = entry.resolve(strict=True)  # a dangling link raises
            mode = resolved.stat().st_mode
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
            return None
        inside = resolved.parent == self.folder or self.folder in resolved.parents
        if not inside or resolved.suffix not in SUFFIXES or not stat.S_ISREG(mode) or not os.access(resolved, os.R_OK):
            return None
        return resolved


def check_folder(folder: Path) -> None:
    if not folder.exists():
        raise ValueError(f"--embeds-dir {folder} does not exist: name a folder of prompt embeddings "
                         f"({', '.join(SUFFIXES)} files)")
    if not folder.is_dir():
        raise ValueError(f"--embeds-dir {folder} is a file, not a folder: name the folder that holds it")
    try:
        next(folder.iterdir(), None)
    except OSError as exc:
        raise ValueError(f"--embeds-dir {folder} cannot be read: {exc.strerror}") from exc
