"""A stream's mp4 on the server: all of a bounded stream (``WholeRecorder``), at most the last ``max_seconds`` of a live
one (``RollingRecorder``), kept as short segments on disk.

A live stream has no end the server can plan for, so its recording is a ring of mp4 segments of ``segment_seconds``
each: when the segments hold more than ``max_seconds`` the oldest is deleted. At the end the kept segments are joined
without re-encoding (ffmpeg's concat demuxer, from imageio-ffmpeg) into one file, which says how much of the stream it
holds.
"""

from __future__ import annotations

import subprocess
from collections import deque
from pathlib import Path

import torch

from ..video import FPS, Mp4Writer


class RollingRecorder:
    def __init__(self, path: Path, width: int, height: int, max_seconds: float, segment_seconds: float = 10.0, fps: int = FPS):
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        self.path, self.size, self.fps, self.max_seconds = Path(path), (width, height), fps, max_seconds
        self.max_frames = max(1, int(max_seconds * fps))
        # segments of at most a quarter of the limit, so what is kept stays between 3/4 of it and all of it
        self.segment_frames = max(1, min(round(segment_seconds * fps), self.max_frames // 4))
        self.total_frames = 0
        self._done: deque[tuple[Path, int]] = deque()  # finished segments and their frame counts
        self._writer: Mp4Writer | None = None
        self._count = 0

    def write(self, frames: torch.Tensor) -> None:
        """``frames`` ``[T, H, W, 3]`` uint8."""
        start = 0
        while start < frames.shape[0]:
            if self._writer is None:
                self._writer = Mp4Writer(self.path.with_name(f"{self.path.stem}.seg{self._count:06d}.mp4"), *self.size, fps=self.fps)
                self._count += 1
            take = min(frames.shape[0] - start, self.segment_frames - self._writer.frames)
            self._writer.write(frames[start : start + take])
            start += take
            self.total_frames += take
            if self._writer.frames == self.segment_frames:
                self._done.append((self._writer.close(), self._writer.frames))
                self._writer = None
            while self._done and self.kept_frames > self.max_frames:
                self._done.popleft()[0].unlink(missing_ok=True)

    @property
    def kept_frames(self) -> int:
        return sum(n for _, n in self._done) + (self._writer.frames if self._writer else 0)

    def close(self) -> Path:
        """Join the kept segments into ``path``."""
        if self._writer is not None:
            self._done.append((self._writer.close(), self._writer.frames))
            self._writer = None
        import imageio_ffmpeg

        listing = self.path.with_name(f".{self.path.stem}.segments.txt")
        listing.write_text("".join(f"file '{p.resolve()}'\n" for p, _ in self._done))
        partial = self.path.with_name(f".{self.path.stem}.partial.mp4")
        try:
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                            "-c", "copy", str(partial)], check=True, capture_output=True, timeout=300)
            partial.replace(self.path)
        finally:
            listing.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
            for p, _ in self._done:
                p.unlink(missing_ok=True)
        return self.path

    def finish(self) -> str | None:
        """``close``, and what the mp4 holds of the stream when that is not all of it (a status's ``video_note``)."""
        kept, total = self.kept_frames / self.fps, self.total_frames / self.fps
        self.close()
        if kept >= total:
            return None
        return f"the last {kept:.1f} s of {total:.1f} s (this server keeps at most {self.max_seconds:g} s of a live stream)"

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for p, _ in self._done:
            p.unlink(missing_ok=True)
        self._done.clear()


class WholeRecorder:
    """A bounded stream's mp4: every frame (the stream's size is within the server's limits)."""

    def __init__(self, path: Path, width: int, height: int, fps: int = FPS):
        self._writer = Mp4Writer(path, width, height, fps=fps)

    def write(self, frames: torch.Tensor) -> None:
        self._writer.write(frames)

    def finish(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


def open_recorder(path: Path, width: int, height: int, live: bool, max_record_seconds: float):
    """The recorder of a stream's mp4: the last ``max_record_seconds`` of a live stream, all of a bounded one."""
    return RollingRecorder(path, width, height, max_record_seconds) if live else WholeRecorder(path, width, height)
