"""Which latent frames a chunk attends, where each lives in the ring cache, and its temporal RoPE position.

Plain Python bookkeeping, separate from the tensors that hold K/V (``kv_cache.RingKVCache``).

Layout: ``anchor_frames`` fixed slots for the first frames, then a circular window of ``ring_frames`` slots.
Chunk c (frames ``[cM, cM+M)``) attends, in frame order: the anchor frames, the ``history_frames`` frames
before the chunk, and the chunk itself. With ``history_frames = M - 1`` and one anchor frame that is
HiStream's anchor-guided sliding window (at most 2M frames, ring of 2M-1 slots); with ``history_frames =
None`` every earlier frame is kept (Self-Forcing), and the ring is sized to the whole video.
"""

from __future__ import annotations

from dataclasses import dataclass

POSITION_MODES = ("absolute", "window")


@dataclass(frozen=True)
class WindowPlan:
    chunk_size: int  # M latent frames per chunk
    anchor_frames: int  # first frames kept forever (the attention sink)
    history_frames: int | None  # frames before the chunk to attend; None = all of them
    total_frames: int | None = None  # latent frames in the video; required when history_frames is None
    positions: str = "absolute"  # temporal RoPE index: the frame index, or the rank inside the window

    def __post_init__(self):
        if self.chunk_size < 1 or self.anchor_frames < 0:
            raise ValueError(f"bad window: chunk_size={self.chunk_size}, anchor_frames={self.anchor_frames}")
        if self.history_frames is None and self.total_frames is None:
            raise ValueError("a full-history window needs total_frames to size its cache")
        if self.history_frames is not None and self.history_frames < 0:
            raise ValueError(f"history_frames must be >= 0, got {self.history_frames}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}")

    @property
    def ring_frames(self) -> int:
        if self.history_frames is None:
            return max(self.total_frames - self.anchor_frames, self.chunk_size)
        return self.history_frames + self.chunk_size

    @property
    def slots(self) -> int:
        """Frame slots the cache preallocates: anchor + ring. Independent of video length for a sliding window."""
        return self.anchor_frames + self.ring_frames

    @property
    def fixed_positions(self) -> bool:
        """Whether a cached frame keeps its RoPE positions forever (``absolute``), so K can be cached rotated."""
        return self.positions == "absolute"

    def slot_of(self, frame: int) -> int:
        if frame < self.anchor_frames:
            return frame
        return self.anchor_frames + (frame - self.anchor_frames) % self.ring_frames

    def chunk_frames(self, chunk: int) -> list[int]:
        return list(range(chunk * self.chunk_size, (chunk + 1) * self.chunk_size))

    def visible_frames(self, chunk: int) -> list[int]:
        """Frames chunk ``chunk`` attends, ascending: anchor, history, then the chunk itself."""
        start = chunk * self.chunk_size
        first_history = 0 if self.history_frames is None else max(0, start - self.history_frames)
        anchor = [f for f in range(min(self.anchor_frames, first_history))]
        return anchor + list(range(first_history, start)) + self.chunk_frames(chunk)

    def temporal_positions(self, chunk: int) -> list[int]:
        """RoPE temporal index of each visible frame (same order as ``visible_frames``)."""
        frames = self.visible_frames(chunk)
        return frames if self.positions == "absolute" else list(range(len(frames)))

    def max_temporal_position(self, num_chunks: int) -> int:
        if self.positions == "window":
            return max(len(self.visible_frames(c)) for c in range(min(num_chunks, self.slots + 2))) - 1
        return num_chunks * self.chunk_size - 1
