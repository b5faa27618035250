"""The Triton backend: ring attention with fused RoPE, fused-norm recache writes, fused downsample-patchify.

Whole-sequence and text cross-attention stay on SDPA (inherited): they are not on the cached path.
"""

from __future__ import annotations

import torch

from ..kernels.downsample_recache import downsample_patchify, recache_write
from ..kernels.ring_attention import ring_attention
from .ring import RingView
from .rope import axis_dims
from .torch_ref import TorchAttention


class TritonAttention(TorchAttention):
    name = "triton"

    def write_kv(self, k_store, v_store, rows, k_proj, v_proj, norm_k) -> None:
        weight = getattr(norm_k, "weight", None)
        recache_write(k_proj.contiguous(), v_proj.contiguous(), weight, getattr(norm_k, "eps", 0.0), rows, k_store, v_store)

    def ring_attention(self, q: torch.Tensor, k_store: torch.Tensor, v_store: torch.Tensor, view: RingView) -> torch.Tensor:
        cos, sin = view.rope_table
        pairs = tuple(d // 2 for d in axis_dims(q.shape[-1]))
        return ring_attention(q, k_store, v_store, view.slot_index, view.position_index, cos, sin, view.grid, pairs)

    def downsample_patches(self, x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
        return downsample_patchify(x, factor, patch_size)
