"""One forward's self-attention against a ring cache: write the chunk's K/V into its slots, attend the window.

Every forward of a chunk (denoising steps and the t=0 recache) runs the same path: denoising writes the
chunk's noisy K/V, and the recache, the last writer, leaves the clean K/V for later chunks.
"""

from __future__ import annotations

import torch

from ...attention.ring import RingView
from .kv_cache import RingKVCache


class WindowAttention:
    """Built once per (resolution, chunk) over that chunk's view of the cache; called by the DiT as
    ``attend(layer, q, k_proj, v_proj, norm_k)``."""

    def __init__(self, cache: RingKVCache, view: RingView, backend):
        self.cache, self.view, self.backend = cache, view, backend

    @property
    def key_tokens(self) -> int:
        return self.view.key_tokens

    def __call__(self, layer: int, q: torch.Tensor | None, k_proj: torch.Tensor, v_proj: torch.Tensor, norm_k) -> torch.Tensor | None:
        # q: [B, M*S, H, D] after RMSNorm, not rotated, or None to write only; k_proj, v_proj: [B, M*S, C]
        k_store, v_store = self.cache.k[layer], self.cache.v[layer]  # [B, slots*S, H, D]
        if self.cache.fp8:  # e4m3 ring with scales [B, slots, H] (attention.fp8)
            scales = self.cache.k_scale[layer], self.cache.v_scale[layer]
            self.backend.write_kv_fp8(k_store, v_store, *scales, self.view, k_proj, v_proj, norm_k)
            return None if q is None else self.backend.ring_attention_fp8(q, k_store, v_store, *scales, self.view)
        self.backend.write_kv(k_store, v_store, self.view, k_proj, v_proj, norm_k)
        return None if q is None else self.backend.ring_attention(q, k_store, v_store, self.view)
