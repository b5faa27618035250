"""The server's folder of prompt-embeddings files (``--embeds-dir``), which requests name by file name only.

Checked once at startup, so a mistyped folder stops the server with one line instead of failing every request
later; a name is looked up among the folder's files, so no request can reach a path outside it.
"""

from __future__ import annotations

from pathlib import Path

SUFFIXES = (".safetensors", ".pt", ".pth")


class EmbeddingsDir:
    def __init__(self, folder: Path | str | None):
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            check_folder(self.folder)

    def names(self) -> list[str]:
        if self.folder is None:
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.suffix in SUFFIXES)

    def path(self, name: str) -> str:
        """The file a request names ("" for none); ValueError, with the choices, for a name this server lacks."""
        if not name:
            return ""
        names = self.names()
        if name not in names:
            raise ValueError(f"no embeddings file {name!r} on this server; it has {names}")
        return str(self.folder / name)


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
