"""One forward's self-attention against a ring cache: write the chunk's K/V into its slots, attend the window.

Every forward of a chunk (denoising steps and the t=0 recache) runs the same path: denoising writes the
chunk's noisy K/V, and the recache, the last writer, leaves the clean K/V for later chunks. The backend is handed the
layer as one ``CacheLayer`` whatever the ring's dtype; the engine has already refused a dtype it cannot read
(``runners.precision.check_engine``).
"""

from __future__ import annotations

import torch

from ...attention.protocol import AttentionBackend
from ...attention.ring import RingView
from .kv_cache import RingKVCache


class WindowAttention:
    """Built once per (resolution, chunk) over that chunk's view of the cache; called by the DiT as
    ``attend(layer, q, k_proj, v_proj, norm_k)``."""

    def __init__(self, cache: RingKVCache, view: RingView, backend: AttentionBackend):
        self.cache, self.view, self.backend = cache, view, backend

    @property
    def key_tokens(self) -> int:
        return self.view.key_tokens

    def __call__(self, layer: int, q: torch.Tensor | None, k_proj: torch.Tensor, v_proj: torch.Tensor, norm_k) -> torch.Tensor | None:
        # q: [B, M*S, H, D] after RMSNorm, not rotated, or None to write only; k_proj, v_proj: [B, M*S, C]
        ring = self.cache.layer(layer)  # K, V [B, slots*S, H, D] (and, in e4m3, scales [B, slots, H])
        self.backend.write_kv(ring, self.view, k_proj, v_proj, norm_k)
        return None if q is None else self.backend.ring_attention(q, ring, self.view)
