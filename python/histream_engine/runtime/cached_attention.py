"""One forward's self-attention against a ring cache: write the chunk's K/V into its slots, attend the window.

Every forward of a chunk (denoising steps and the t=0 recache) runs the same path: denoising writes the
chunk's noisy K/V, and the recache, the last writer, leaves the clean K/V for later chunks.
"""

from __future__ import annotations

import torch

from ..attention.rope import grid_positions, rope_cos_sin
from .kv_cache import RingKVCache


class WindowAttention:
    """Built once per (resolution, chunk); called by the DiT as ``attend(layer, q, k, v)``."""

    def __init__(self, cache: RingKVCache, chunk: int, grid: tuple[int, int], freqs: torch.Tensor, backend, rope_dtype):
        plan = cache.plan
        gh, gw = grid
        device = cache.k.device
        self.cache, self.backend = cache, backend
        self.write_rows = cache.rows(plan.chunk_frames(chunk))  # [M*S]
        self.read_rows = cache.rows(plan.visible_frames(chunk))  # [Lk]
        temporal = plan.temporal_positions(chunk)
        k_pos = grid_positions(temporal, gh, gw, device=device)  # [Lk, 3]
        q_pos = grid_positions(temporal[-plan.chunk_size :], gh, gw, device=device)  # [M*S, 3]
        self.q_rope = rope_cos_sin(q_pos, freqs, rope_dtype)
        self.k_rope = rope_cos_sin(k_pos, freqs, rope_dtype)

    @property
    def key_tokens(self) -> int:
        return self.read_rows.numel()

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k, v: [B, M*S, H, D], q and k after RMSNorm, not rotated
        self.cache.write(layer, self.write_rows, k, v)
        keys, values = self.cache.gather(layer, self.read_rows)  # [B, Lk, H, D]
        return self.backend.self_attention(q, keys, values, self.q_rope, self.k_rope)
