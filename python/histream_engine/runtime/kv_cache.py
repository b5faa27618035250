"""Self-attention K/V storage for one resolution: preallocated once, written in place by slot.

K is stored after RMSNorm, and after RoPE where a frame's positions never change (``absolute`` temporal
positions: every attention call then reads it as it lies); with ``window`` positions it is stored before RoPE
and rotated by its current position when attended. Which frame lives in which slot is decided by
``window.WindowPlan``; this class holds the tensors and turns the plan into per-chunk ``RingView``s.
"""

from __future__ import annotations

import torch

from ..attention.ring import RingView
from .window import WindowPlan


class RingKVCache:
    def __init__(self, plan: WindowPlan, num_layers: int, batch: int, tokens_per_frame: int, heads: int, head_dim: int, dtype, device,
                 rotate_keys: bool = True):
        self.plan = plan
        # False keeps K un-rotated even where positions are fixed: exported graphs take the window's K as projected.
        self.rotate_keys = rotate_keys
        self.tokens_per_frame = tokens_per_frame
        # Head-major memory, seen as [layers, B, slots*S, H, D]: every attention reads one head's keys as one
        # contiguous block (SDPA's CPU kernel ran 2-3% faster on such K/V at 384x384; TMA and cuDNN take either).
        shape = (num_layers, batch, heads, plan.slots * tokens_per_frame, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device).transpose(2, 3)  # [layers, B, slots*S, H, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device).transpose(2, 3)  # [layers, B, slots*S, H, D]

    def view(self, chunk: int, grid: tuple[int, int], freqs: torch.Tensor, rope_dtype=torch.float32, rope_positions: int = 0) -> RingView:
        """Chunk ``chunk``'s window: the slots and temporal positions of the frames it attends.

        ``rope_positions`` fixes the kernels' RoPE table length for the whole stream (see ``RingView``)."""
        plan = self.plan
        return RingView(
            slots=[plan.slot_of(f) for f in plan.visible_frames(chunk)],
            frame_pos=plan.temporal_positions(chunk),
            query_frames=plan.chunk_size,
            grid=grid,
            num_slots=plan.slots,
            freqs=freqs,
            device=self.k.device,
            rope_dtype=rope_dtype,
            rope_positions=rope_positions,
            rotated_keys=plan.fixed_positions and self.rotate_keys,
        )

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
