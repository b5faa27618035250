"""A stream's mp4 on the server, kept as one mp4 segment a chunk, so that the recording outlives the worker that made it.

The session writes each chunk's frames as their own mp4 (``write_segment``; each starts with a keyframe) and hands it
to its transport with the chunk's event. The transport keeps the segments where they outlive the worker (``Segments``:
a folder in plain serve's job, the registry's folder over Ray), and at the end joins them without re-encoding
(ffmpeg's concat demuxer, from imageio-ffmpeg) into one file. A stream resumed from a checkpoint goes on adding
segments from its boundary, so the joined video holds every frame once, with no duplicate at the seam. A live
stream's recording keeps at most its newest ``max_frames`` frames (whole chunks, the newest always): older segments
are deleted as new ones come, and the mp4 says how much of the stream it holds.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch

from ..video import FPS, Mp4Writer

SEGMENT = re.compile(r"(\d{6})-(\d+)\.mp4")  # a chunk's index and its frame count: a restart re-reads them from the names


def segment_name(index: int, frames: int) -> str:
    return f"{index:06d}-{frames}.mp4"


def write_segment(folder: Path, index: int, frames: torch.Tensor, fps: int = FPS) -> Path:
    """Chunk ``index``'s frames ``[T, H, W, 3]`` uint8 as one mp4 in ``folder`` (written beside, renamed into place)."""
    path = Path(folder) / segment_name(index, frames.shape[0])
    with Mp4Writer(path, frames.shape[2], frames.shape[1], fps=fps) as writer:
        writer.write(frames)
    return path


class Segments:
    """One stream's kept segments in ``folder``, oldest first. ``max_frames``: a live stream's bound (None: keep all)."""

    def __init__(self, folder: Path, max_frames: int | None = None, fps: int = FPS):
        self.folder, self.max_frames, self.fps = Path(folder), max_frames, fps
        self.folder.mkdir(parents=True, exist_ok=True)
        self._kept: list[tuple[int, int, Path]] = []  # (chunk index, frames, file)
        self.total_frames = 0
        for path in sorted(self.folder.iterdir()):  # a restart: what the last run kept
            if (m := SEGMENT.fullmatch(path.name)) is not None:
                self._kept.append((int(m[1]), int(m[2]), path))
                self.total_frames += int(m[2])
            elif path.name.startswith("."):  # a segment whose writer died before renaming it into place
                path.unlink(missing_ok=True)

    def add(self, index: int, frames: int, source: Path | bytes) -> None:
        """Chunk ``index``'s segment: a file (moved here) or its bytes. Chunks come in order; one at or before the last
        kept one replaces what was kept from it on (a stream resumed from an earlier boundary)."""
        self.drop_from(index)
        path = self.folder / segment_name(index, frames)
        if isinstance(source, bytes):
            partial = path.with_name(f".{path.name}.partial")
            partial.write_bytes(source)
            partial.replace(path)
        else:
            Path(source).replace(path)
        self._kept.append((index, frames, path))
        self.total_frames += frames
        while self.max_frames is not None and len(self._kept) > 1 and self.kept_frames > self.max_frames:
            self._kept.pop(0)[2].unlink(missing_ok=True)

    def drop_from(self, index: int) -> None:
        """Forget the segments of chunk ``index`` and later (they will be made again from a checkpoint at ``index``)."""
        while self._kept and self._kept[-1][0] >= index:
            _, frames, path = self._kept.pop()
            path.unlink(missing_ok=True)
            self.total_frames -= frames

    @property
    def kept_frames(self) -> int:
        return sum(frames for _, frames, _ in self._kept)

    @property
    def chunks(self) -> int:
        """The chunk after the last kept segment: where a stream whose recording this is goes on."""
        return self._kept[-1][0] + 1 if self._kept else 0

    def join(self, out: Path) -> str | None:
        """The kept segments joined into ``out`` (nothing is written when there are none), and what the mp4 holds of the
        stream when that is not all of it (a status's ``video_note``)."""
        if not self._kept:
            return None
        import imageio_ffmpeg

        out = Path(out)
        listing = out.with_name(f".{out.stem}.segments.txt")
        listing.write_text("".join(f"file '{path.resolve()}'\n" for _, _, path in self._kept))
        partial = out.with_name(f".{out.stem}.partial.mp4")
        try:
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i",
                            str(listing), "-c", "copy", str(partial)], check=True, capture_output=True, timeout=300)
            partial.replace(out)
        finally:
            listing.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        kept, total = self.kept_frames / self.fps, self.total_frames / self.fps
        if self.max_frames is None or self.kept_frames >= self.total_frames:
            return None
        return (f"the last {kept:.1f} s of {total:.1f} s (this server keeps at most {self.max_frames / self.fps:g} s of a "
                "live stream)")

    def discard(self) -> None:
        """The segments and their folder go (the stream failed, or its video has been joined)."""
        for _, _, path in self._kept:
            path.unlink(missing_ok=True)
        self._kept.clear()
        for path in self.folder.glob(".*"):
            path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:  # something else lives there: leave it
            pass


def record_frames(max_record_seconds: float, live: bool) -> int | None:
    """The most frames a stream's recording keeps: a live stream's last ``max_record_seconds``, all of a bounded one."""
    return max(1, int(max_record_seconds * FPS)) if live else None
