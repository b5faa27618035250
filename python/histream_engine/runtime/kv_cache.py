"""Self-attention K/V storage for one resolution: preallocated once, written in place by slot.

K is stored after RMSNorm and before RoPE, so positions can be re-indexed when attending
(``window`` mode) and a kernel can rotate on the fly. Which frame lives in which slot is decided by
``window.WindowPlan``; this class only moves tensors.
"""

from __future__ import annotations

import torch

from .window import WindowPlan


class RingKVCache:
    def __init__(self, plan: WindowPlan, num_layers: int, batch: int, tokens_per_frame: int, heads: int, head_dim: int, dtype, device):
        self.plan = plan
        self.tokens_per_frame = tokens_per_frame
        shape = (num_layers, batch, plan.slots * tokens_per_frame, heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [layers, B, slots*S, H, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # [layers, B, slots*S, H, D]

    def rows(self, frames: list[int]) -> torch.Tensor:
        """Token rows ``[len(frames) * S]`` (long, on the cache's device) holding ``frames``, in the given order."""
        S = self.tokens_per_frame
        slots = torch.tensor([self.plan.slot_of(f) for f in frames], dtype=torch.long)
        rows = (slots[:, None] * S + torch.arange(S)[None, :]).reshape(-1)
        return rows.to(self.k.device)

    def write(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a chunk's K/V ``[B, M*S, H, D]`` at ``rows``."""
        self.k[layer].index_copy_(1, rows, k.to(self.k.dtype))
        self.v[layer].index_copy_(1, rows, v.to(self.v.dtype))

    def gather(self, layer: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V ``[B, len(rows), H, D]`` of ``rows`` (a copy: the torch reference path; kernels read in place)."""
        return self.k[layer].index_select(1, rows), self.v[layer].index_select(1, rows)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
