"""The mp4 of a live stream, bounded: at most its last ``max_seconds``, kept as short segments on disk.

A live stream has no end the server can plan for, so its recording is a ring of mp4 segments of ``segment_seconds``
each: when the segments hold more than ``max_seconds`` the oldest is deleted. At the end the kept segments are
joined without re-encoding (ffmpeg's concat demuxer, from imageio-ffmpeg) into one file, which says how much of
the stream it holds.
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
        self.path, self.size, self.fps = Path(path), (width, height), fps
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

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for p, _ in self._done:
            p.unlink(missing_ok=True)
        self._done.clear()
