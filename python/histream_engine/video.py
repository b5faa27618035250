"""H.264 mp4 output, written as chunks arrive; the file appears under its name only once complete."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .optional import require

FPS = 16


class Mp4Writer:
    """Streams uint8 frames into ``path``; until ``close`` they go to a hidden temporary file, so a failed or
    interrupted run leaves no partial mp4 behind."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int = FPS):
        imageio_ffmpeg = require("imageio_ffmpeg", None, "writing mp4")
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"output must be an .mp4 file, got {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.stem}.partial.mp4")
        self.size = (width, height)
        self.frames = 0
        self._writer = imageio_ffmpeg.write_frames(
            str(self.partial), self.size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=16, quality=8
        )
        self._writer.send(None)

    def write(self, frames: torch.Tensor) -> None:
        """``frames`` ``[T, H, W, 3]`` uint8."""
        if frames.dtype != torch.uint8 or frames.dim() != 4 or tuple(frames.shape[2:0:-1]) != self.size:
            raise ValueError(f"frames must be uint8 [T, {self.size[1]}, {self.size[0]}, 3], got {frames.dtype} {tuple(frames.shape)}")
        for frame in frames.cpu().numpy():
            self._writer.send(frame.tobytes())
        self.frames += frames.shape[0]

    def close(self) -> Path:
        self._writer.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
