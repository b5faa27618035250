"""Backends built on the Triton RoPE pre-pass: rotate Q and the visible K once, then hand them to an attention core.

Per cached self-attention call: ``write_kv`` (fused K RMSNorm + ring write) stores the chunk's K/V
un-rotated; the pre-pass (``kernels/rope_prepass.py``) rotates the chunk's Q and every visible K into
preallocated scratch; a core (``cores``: ours in Triton, cuDNN through SDPA, FlashAttention, or the fastest
of them with ``auto``) attends ring rows ``[0, Lk)`` with V read in place. The low-res recache input comes
from the fused downsample-patchify kernel. Whole-sequence and text cross-attention stay on SDPA (inherited):
they are not on the cached path.

Why rotate every call instead of keeping K rotated in the ring: the pre-pass moves about 0.45 GB per call at
1080p, about 1% of the attention's time on an H100 (an estimate from bandwidth, to be confirmed by
``bench/gpu_suite.sh``), and un-rotated storage is what lets ``window`` positions re-index the same cached
frames every chunk and each resolution keep its own NTK scaling. Rotated storage would save that 1% in
``absolute`` mode only, at the price of a second storage format.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..kernels.downsample_recache import downsample_patchify, recache_write
from ..kernels.rope_prepass import rope_prepass
from .ring import RingView
from .rope import apply_rope, axis_dims, deinterleave, grid_positions, rope_cos_sin
from .torch_ref import TorchAttention

Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class PrepassAttention(TorchAttention):
    def __init__(self, name: str, core: Core):
        self.name = name
        self.core = core
        # Scratch is allocated once per shape and reused by every layer and chunk: a CUDA graph captures
        # its addresses, and an unbounded stream must not allocate per call.
        self._scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def scratch(self, q: torch.Tensor, k_store: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, Lq, H, D = q.shape
        R = k_store.shape[1]
        key = (B, Lq, R, H, D, q.dtype, q.device)
        if key not in self._scratch:
            q_rot = torch.empty((B, H, Lq, D), dtype=q.dtype, device=q.device)  # [B, H, Lq, D]
            # zeros: the rows past the visible keys are read by a core's last tile (and masked), never garbage
            k_rot = torch.zeros((B, H, R, D), dtype=q.dtype, device=q.device)  # [B, H, R, D]
            self._scratch[key] = (q_rot, k_rot)
        return self._scratch[key]

    def write_kv(self, k_store, v_store, rows, k_proj, v_proj, norm_k) -> None:
        weight = getattr(norm_k, "weight", None)
        recache_write(k_proj.contiguous(), v_proj.contiguous(), weight, getattr(norm_k, "eps", 0.0), rows, k_store, v_store)

    def prepass(self, q: torch.Tensor, k_store: torch.Tensor, view: RingView) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated, de-interleaved Q ``[B, H, Lq, D]`` and K ``[B, H, R, D]`` (rows ``[0, Lk)`` valid, slot order)."""
        q_rot, k_rot = self.scratch(q, k_store)
        cos, sin = view.rope_table
        pairs = tuple(d // 2 for d in axis_dims(q.shape[-1]))
        rope_prepass(q, k_store, view.query_position_index, view.slot_position_index, cos, sin, view.grid, pairs, q_rot, k_rot)
        return q_rot, k_rot

    def ring_attention(self, q: torch.Tensor, k_store: torch.Tensor, v_store: torch.Tensor, view: RingView) -> torch.Tensor:
        q_rot, k_rot = self.prepass(q, k_store, view)
        return self.core(q_rot, k_rot, v_store, view.key_tokens)

    def downsample_patches(self, x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
        return downsample_patchify(x, factor, patch_size)


def reference_prepass(q: torch.Tensor, k_store: torch.Tensor, view: RingView) -> tuple[torch.Tensor, torch.Tensor]:
    """What the pre-pass writes, in plain torch: Q ``[B, H, Lq, D]`` and the visible K ``[B, H, Lk, D]``."""
    S = view.tokens_per_frame
    k_cos, k_sin = rope_cos_sin(grid_positions(view.slot_positions, *view.grid, device=q.device), view.freqs, view.rope_dtype)
    k = k_store[:, : len(view.slots) * S]  # [B, Lk, H, D] the ring's first NV slots
    q_rot = deinterleave(apply_rope(q, *view.q_rope)).transpose(1, 2)
    k_rot = deinterleave(apply_rope(k, k_cos, k_sin)).transpose(1, 2)
    return q_rot, k_rot
