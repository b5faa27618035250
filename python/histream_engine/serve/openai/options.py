"""The /v1 settings a server starts with (the CLI's ``--data-dir``, ``--retention-seconds``, ``--max-stored-bytes``,
``--max-upload-bytes``), each checked once when they are made, so a setting that cannot work stops the server with
one line at startup."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VideoOptions:
    data_dir: Path | None = None  # None: a temporary folder that goes with the server (nothing survives a restart)
    retention_seconds: float = 86400.0  # a finished video's files are kept this long (its expires_at)
    max_stored_bytes: int = 10 << 30  # all videos' files together; the oldest finished go first
    max_upload_bytes: int = 64 << 20  # an uploaded image or mp4 (a larger request is refused before it is read)
    model: str = "histream"  # the id /v1/models lists and each video names
    stand_in_text: bool = False  # the demo model: text prompts become the demo's stand-in embeddings (demo.stand_in_prompt)

    def __post_init__(self):
        if isinstance(self.retention_seconds, bool) or not isinstance(self.retention_seconds, (int, float)) \
                or not math.isfinite(self.retention_seconds) or self.retention_seconds <= 0:
            raise ValueError(f"--retention-seconds {self.retention_seconds!r}: give a finite number of seconds > 0")
        for name, flag, least in (("max_stored_bytes", "--max-stored-bytes", 1 << 20), ("max_upload_bytes", "--max-upload-bytes", 1024)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{flag} {value!r}: give a whole number of bytes >= {least}")
        if self.data_dir is not None:
            check_data_dir(Path(self.data_dir))


def check_data_dir(folder: Path) -> None:
    """``--data-dir``: a folder this process can write, made when missing (its parent must exist)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--data-dir {folder} is a file, not a folder: name a folder for the stored videos")
    if not folder.exists():
        if not folder.parent.is_dir():
            raise ValueError(f"--data-dir {folder}: its parent folder {folder.parent} does not exist")
        try:
            folder.mkdir()
        except OSError as exc:
            raise ValueError(f"--data-dir {folder} cannot be made: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--data-dir {folder} is not writable by this process")
