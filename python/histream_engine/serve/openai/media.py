"""Images and mp4s for /v1: an uploaded image or video read (a file that is neither is refused with what was found),
the last frames of a video taken as a clip, videos joined, and a video's thumbnail and spritesheet made.

Videos are read and written with imageio-ffmpeg's ffmpeg (as ``video.Mp4Writer`` writes them). Two mp4s this server
wrote (same encoder, same settings) are joined without re-encoding, by ffmpeg's concat demuxer, so each part's
frames decode as they did alone; an uploaded mp4 is encoded again first, because its encoder's settings are not
known to match and a stream copy of mismatched parts makes a file players cannot read.
"""

from __future__ import annotations

import io
import subprocess
from collections import deque
from pathlib import Path

import numpy as np
import torch

from ...video import Mp4Writer
from .wire import bad

THUMB_QUALITY = 85
SPRITE_FRAMES = 16  # at most, evenly spaced
SPRITE_COLUMNS = 4
SPRITE_TILE_WIDTH = 256  # larger frames are scaled down to this width in the spritesheet


def read_image(data: bytes, param: str) -> np.ndarray:
    """An uploaded image as ``[H, W, 3]`` uint8 RGB; 400 for a file that is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise bad(f"{param} is not an image this server can read (PNG, JPEG or WebP): {type(exc).__name__}", param,
                  "invalid_image") from exc


def image_size(data: bytes, param: str) -> tuple[int, int]:
    """(width, height) from an image's header, before its pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise bad(f"{param} is not an image this server can read (PNG, JPEG or WebP): {type(exc).__name__}", param,
                  "invalid_image") from exc


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def as_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` (or an image ``[H, W, 3]``) as the engine's context: ``[3, T, H, W]`` (``[3, H, W]``)
    in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return x.permute(2, 0, 1).contiguous() if x.dim() == 3 else x.permute(3, 0, 1, 2).contiguous()


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _frames(path: Path):
    """(width, height) and an iterator of ``[H, W, 3]`` uint8 frames."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    width, height = next(reader)["size"]

    def frames():
        try:
            for raw in reader:
                yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        finally:
            reader.close()

    return (width, height), frames()


def probe_video(path: Path, param: str) -> tuple[int, int, int]:
    """(width, height, frames) of an uploaded video; 400 for a file ffmpeg cannot read as one."""
    import imageio_ffmpeg

    try:
        (width, height), frames = _frames(path)
        frames.close()
        count, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as exc:
        raise bad(f"{param} is not a video this server can read (an mp4): ffmpeg could not decode it", param,
                  "invalid_video") from exc
    if count < 1:
        raise bad(f"{param} holds no frames", param, "invalid_video")
    return width, height, count


def last_frames(path: Path, count: int) -> np.ndarray:
    """The video's last ``count`` frames, ``[count, H, W, 3]`` uint8 (only those are held while it is read)."""
    _, frames = _frames(path)
    kept = deque(frames, maxlen=count)
    if len(kept) < count:
        raise ValueError(f"the video has {len(kept)} frames, fewer than the {count} asked for")
    return np.stack(kept)


def reencode(path: Path, out: Path) -> int:
    """``path``'s frames written again by ``Mp4Writer`` (so that it joins this server's own parts); returns how many."""
    (width, height), frames = _frames(path)
    with Mp4Writer(out, width, height) as writer:
        for frame in frames:
            writer.write(torch.from_numpy(frame.copy())[None])
    return writer.frames


def concat(parts: list[Path], out: Path) -> Path:
    """Parts this server encoded, joined into ``out`` without re-encoding."""
    listing = out.with_name(f".{out.stem}.parts.txt")
    partial = out.with_name(f".{out.stem}.joining.mp4")
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in parts))
    try:
        subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                        str(partial)], check=True, capture_output=True, timeout=600)
        partial.replace(out)
    finally:
        listing.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return out


def previews(path: Path, frames: int) -> tuple[bytes, bytes]:
    """(thumbnail, spritesheet) of a video of ``frames`` frames, as JPEG: its first frame, and up to 16 frames evenly
    spaced over it in rows of 4."""
    from PIL import Image

    picks = sorted({round(i * (frames - 1) / max(1, min(SPRITE_FRAMES, frames) - 1)) for i in range(min(SPRITE_FRAMES, frames))})
    chosen, first = [], None
    _, decoded = _frames(path)
    for i, frame in enumerate(decoded):
        if first is None:
            first = frame
        if i in picks:
            chosen.append(frame)
    if first is None:
        raise ValueError(f"{path.name} holds no frames")
    height, width = first.shape[:2]
    scale = min(1.0, SPRITE_TILE_WIDTH / width)
    tile = (max(1, round(width * scale)), max(1, round(height * scale)))
    columns = min(SPRITE_COLUMNS, len(chosen))
    sheet = Image.new("RGB", (tile[0] * columns, tile[1] * -(-len(chosen) // columns)))
    for i, frame in enumerate(chosen):
        sheet.paste(Image.fromarray(frame).resize(tile), ((i % columns) * tile[0], (i // columns) * tile[1]))
    return jpeg(Image.fromarray(first)), jpeg(sheet)


def jpeg(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=THUMB_QUALITY)
    return buf.getvalue()
