"""A chunk's view of a ring KV cache: which slot holds each visible frame, and its RoPE positions.

Built once per (resolution, chunk) from plain Python lists, checked there, and handed to a backend's
``write_kv`` / ``ring_attention``. Each backend uses only the derived tensors it needs (all cached): the
torch path rotates with ``q_rope`` (and ``slot_rope`` for un-rotated K); the kernels read
``query_position_index``, ``slot_position_index`` and ``rope_table``. None gathers: a window always fills a
prefix of the ring (``slot_positions``).

A CUDA graph bakes in the addresses of the tensors it read at capture, so a captured view is refreshed
in place (``load``) from the next chunk's view instead of being replaced; every derived tensor then has
a shape that depends only on the window size, never on the chunk index.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .rope import grid_positions, rope_cos_sin, rope_table


@dataclass
class RingView:
    slots: list[int]  # ring slot of each visible frame, in window order
    frame_pos: list[int]  # temporal RoPE position of each visible frame
    query_frames: int  # the chunk: the last ``query_frames`` visible frames
    grid: tuple[int, int]  # (gh, gw) tokens per frame
    num_slots: int  # ring capacity in frames
    freqs: torch.Tensor  # [D/2] float64 inverse frequencies (NTK-scaled where asked)
    device: torch.device
    rope_dtype: torch.dtype = torch.float32
    rope_positions: int = 0  # rows of ``rope_table``; 0 = just enough for this chunk (a graph needs the stream's bound)
    # K is stored rotated: a cached frame's positions never change (``absolute`` temporal positions), so it is
    # rotated once when written instead of at every attention call. Otherwise (``window`` positions) K is stored
    # un-rotated and the visible frames are rotated by their current positions when attended.
    rotated_keys: bool = False

    def __post_init__(self):
        if len(self.slots) != len(self.frame_pos) or not 0 < self.query_frames <= len(self.slots):
            raise ValueError(f"bad ring view: {len(self.slots)} slots, {len(self.frame_pos)} positions, {self.query_frames} query frames")
        if min(self.slots) < 0 or max(self.slots) >= self.num_slots or len(set(self.slots)) != len(self.slots):
            raise ValueError(f"ring slots {self.slots} must be distinct and inside [0, {self.num_slots})")
        if min(self.frame_pos) < 0:
            raise ValueError(f"negative temporal position in {self.frame_pos}")
        if self.rope_positions and self.rope_positions < max(max(self.frame_pos) + 1, *self.grid):
            raise ValueError(f"rope_positions={self.rope_positions} is too few for positions {self.frame_pos} on grid {self.grid}")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def key_tokens(self) -> int:
        return len(self.slots) * self.tokens_per_frame

    @cached_property
    def write_rows(self) -> torch.Tensor:
        """Storage rows of the chunk's own tokens, in the chunk's frame order: ``[M*S]`` long."""
        S = self.tokens_per_frame
        slots = torch.tensor(self.slots[-self.query_frames :], dtype=torch.long)
        return (slots[:, None] * S + torch.arange(S)[None, :]).reshape(-1).to(self.device)

    @cached_property
    def q_rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[M*S, D/2]`` of the chunk's tokens: for its queries, and its keys when stored rotated."""
        pos = grid_positions(self.frame_pos[-self.query_frames :], *self.grid, device=self.device)  # [M*S, 3]
        return rope_cos_sin(pos, self.freqs, self.rope_dtype)

    @cached_property
    def slot_rope(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[NV*S, D/2]`` of the visible keys in ring slot order (rows ``[0, NV*S)``), for un-rotated K."""
        pos = grid_positions(self.slot_positions, *self.grid, device=self.device)  # [NV*S, 3]
        return rope_cos_sin(pos, self.freqs, self.rope_dtype)

    @cached_property
    def slot_positions(self) -> list[int]:
        """Temporal position of the frame in each of the ring's first NV slots, in slot order.

        A window plan always fills a prefix of the ring (anchor slots first, then at most a ring's worth of
        consecutive frames, which wrap onto every ring slot only once they fill it), and softmax attention
        does not care about key order: so kernels attend ring rows ``[0, NV*S)`` as they lie, no gather.
        """
        nv = len(self.slots)
        if sorted(self.slots) != list(range(nv)):
            raise ValueError(f"visible slots {self.slots} are not the ring's first {nv} slots; kernels read a prefix of the ring")
        pos = [0] * nv
        for slot, p in zip(self.slots, self.frame_pos):
            pos[slot] = p
        return pos

    @cached_property
    def slot_position_index(self) -> torch.Tensor:
        return torch.tensor(self.slot_positions, dtype=torch.int32, device=self.device)  # [NV]

    @cached_property
    def query_position_index(self) -> torch.Tensor:
        return torch.tensor(self.frame_pos[-self.query_frames :], dtype=torch.int32, device=self.device)  # [M]

    @cached_property
    def rope_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.rope_positions or max(max(self.frame_pos) + 1, *self.grid)
        return rope_table(n, self.freqs, self.device)

    def same_shapes(self, other: "RingView") -> bool:
        """Whether ``other``'s tensors have this view's shapes (same window size, grid and RoPE table)."""
        return (len(self.slots), self.query_frames, self.grid, self.num_slots, self.rope_positions, self.rotated_keys) == (
            len(other.slots), other.query_frames, other.grid, other.num_slots, other.rope_positions, other.rotated_keys)

    def load(self, other: "RingView") -> None:
        """Copy ``other``'s tensors into this view's, in place, for the tensors this view has built so far.

        The Python lists (``slots``, ``frame_pos``) keep describing the chunk this view was built for: a
        replayed graph only sees tensors, so nothing may read those lists after capture.
        """
        if not self.same_shapes(other):
            raise ValueError(f"cannot load a view of {len(other.slots)} frames on grid {other.grid} into one of {len(self.slots)} on {self.grid}")
        if not torch.equal(self.freqs, other.freqs):
            raise ValueError("cannot load a view with other RoPE frequencies (another resolution or NTK scale)")
        for name in _LOADABLE:
            if name in self.__dict__:
                mine, theirs = self.__dict__[name], getattr(other, name)
                for dst, src in zip(_tensors(mine), _tensors(theirs)):
                    dst.copy_(src)


_LOADABLE = ("write_rows", "q_rope", "slot_rope", "slot_position_index", "query_position_index", "rope_table")


def _tensors(value) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)
