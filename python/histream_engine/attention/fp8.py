"""Attention over an e4m3 ring cache (``EngineConfig(kv_dtype="float8_e4m3fn")``): the write, the reference read, and the
two FP8 attention backends.

A backend that can read an e4m3 ring says so with ``fp8_ring = True`` and provides

- ``write_kv_fp8(k_store, v_store, k_scale, v_scale, view, k_proj, v_proj, norm_k)``: K RMSNorm (+ RoPE where
  ``view.rotated_keys``), then K and V quantized per (frame slot, head) into the chunk's rows and slots;
- ``ring_attention_fp8(q, k_store, v_store, k_scale, v_scale, view)``: a chunk's queries over its window.

Stores are ``[B, rows, H, D]`` e4m3 views (V's D strided, see ``runtime.kv_cache``), scales ``[B, slots, H]`` float32.

- ``torch`` (``torch_ref.TorchAttention``) dequantizes the window and attends it in the model dtype: the reference of
  the cache alone.
- ``torch_fp8``: the FP8 core's arithmetic in torch (``fp8_quant.fp8_core_reference``, tile by tile): Q quantized per
  block, e4m3 QK^T and P.V in fp32. The numerics model of ``triton_fp8``, and what the CPU measures FP8 attention with.
- ``triton_fp8``: the fused FP8 recache write, the pre-pass that rotates and quantizes Q (and, with ``window``
  positions, K), and the FP8 core (``kernels/attention_core_fp8.py``, sm_90a: e4m3 wgmma).
"""

from __future__ import annotations

import torch

from ..kernels.fp8_constants import Q_BLOCK, ROTATED_K_SCALE
from .fp8_quant import fp8_core_reference
from .fp8_ring import chunk_slots, reference_fp8_operands
from .prepass_backend import PrepassAttention, triton_ops
from .ring import RingView
from .torch_ref import TorchAttention

REFERENCE_BLOCK_N = 128  # key rows per tile in ``torch_fp8``: the GPU kernel's BLOCK_N


class TorchFp8Attention(TorchAttention):
    name = "torch_fp8"
    fp8_core = True

    def __init__(self, block_n: int = REFERENCE_BLOCK_N):
        self.block_n = block_n

    def write_kv(self, *args, **kwargs):
        raise RuntimeError(f"attention={self.name!r} reads an e4m3 ring: set EngineConfig(kv_dtype='float8_e4m3fn')")

    ring_attention = write_kv

    def ring_attention_fp8(self, q, k_store, v_store, k_scale, v_scale, view: RingView) -> torch.Tensor:
        q8, qs, k8, ks, v8, vs, k_mult = reference_fp8_operands(q, k_store, v_store, k_scale, v_scale, view)
        return fp8_core_reference(q8, qs, k8, ks, v8, vs, self.block_n, k_mult, out_dtype=q.dtype)


class TritonFp8Attention(PrepassAttention):
    """The Triton FP8 path: fused e4m3 recache write, FP8 pre-pass, FP8 core; downsampling by the Triton kernel."""

    fp8_ring = True
    fp8_core = True

    def __init__(self):
        super().__init__("triton_fp8", core=None, ops=triton_ops())

    def write_kv(self, *args, **kwargs):
        raise RuntimeError(f"attention={self.name!r} reads an e4m3 ring: set EngineConfig(kv_dtype='float8_e4m3fn')")

    ring_attention = write_kv

    def write_kv_fp8(self, k_store, v_store, k_scale, v_scale, view: RingView, k_proj, v_proj, norm_k) -> None:
        from ..kernels.recache_write_fp8 import recache_write_fp8

        rope = None
        if view.rotated_keys:
            cos, sin, grid, pairs = self.rope_args(view, k_store.shape[-1])
            rope = (view.query_position_index, cos, sin, grid, pairs)
        recache_write_fp8(k_proj.contiguous(), v_proj.contiguous(), getattr(norm_k, "weight", None), getattr(norm_k, "eps", 0.0),
                          view.write_rows, chunk_slots(view), view.tokens_per_frame, k_store, v_store, k_scale, v_scale, rope)

    def prepass_fp8(self, q, k_store, v_store, k_scale, v_scale, view: RingView) -> tuple:
        """The FP8 core's inputs: (q8 ``[B, H, Lq, D]`` e4m3, q_scale ``[B, H, Lq / 64]``, k8 ``[B, H, Lk, D]`` e4m3,
        k_scale ``[B, NV, H]``, v_t ``[B, H, D, Lk]`` e4m3, v_scale ``[B, NV, H]``, k_mult, out dtype); apart from
        ``core_fp8`` so that ``bench/attention.py`` can time the two."""
        from ..kernels.attention_core_fp8 import fp8_prepass

        B, Lq, H, D = q.shape
        R, Lk, nv = k_store.shape[1], view.key_tokens, len(view.slots)
        cos, sin, grid, pairs = self.rope_args(view, D)
        q8 = self.scratch((B, H, Lq, D), k_store, "q8")  # [B, H, Lq, D] e4m3
        q_scale = self.scratch((B, H, -(-Lq // Q_BLOCK)), k_scale, "q_scale")  # [B, H, Lq / 64] float32
        ks, vs = k_scale[:, :nv], v_scale[:, :nv]  # [B, NV, H]
        if view.rotated_keys:
            fp8_prepass(q, view.query_position_index, cos, sin, grid, pairs, q8, q_scale)
            k8, k_mult = k_store[:, :Lk].transpose(1, 2), 1.0
        else:
            k_rot = self.scratch((B, H, R, D), k_store, "k8")  # [B, H, R, D] e4m3, slot order
            fp8_prepass(q, view.query_position_index, cos, sin, grid, pairs, q8, q_scale, k_store, ks, view.slot_position_index, k_rot)
            k8, k_mult = k_rot[:, :, :Lk], ROTATED_K_SCALE
        v_t = v_store[:, :Lk].permute(0, 2, 3, 1)  # [B, H, D, Lk], keys contiguous
        return q8, q_scale, k8, ks, v_t, vs, k_mult, q.dtype

    @staticmethod
    def core_fp8(q8, q_scale, k8, k_scale, v_t, v_scale, k_mult, out_dtype) -> torch.Tensor:  # [B, Lq, H, D]
        from ..kernels.attention_core_fp8 import attention_core_fp8

        return attention_core_fp8(q8, q_scale, k8, k_scale, v_t, v_scale, k_mult, out_dtype=out_dtype)

    def ring_attention_fp8(self, q, k_store, v_store, k_scale, v_scale, view: RingView) -> torch.Tensor:
        return self.core_fp8(*self.prepass_fp8(q, k_store, v_store, k_scale, v_scale, view))
