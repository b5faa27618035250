"""Attention over an e4m3 ring cache (``EngineConfig(kv_dtype="float8_e4m3fn")``): the two FP8 attention backends.

Both read an e4m3 ring only (``Capabilities(ring_dtypes=(E4M3,), fp8_core=True)``): one layer is a
``protocol.CacheLayer`` of ``[B, rows, H, D]`` e4m3 views (V's D strided, see ``runtime.cache.kv_cache``) and scales
``[B, slots, H]`` float32, which ``write_kv`` fills (K RMSNorm, + RoPE where ``view.rotated_keys``, then K and V
quantized per (frame slot, head) into the chunk's rows and slots) and ``ring_attention`` reads.

- ``torch`` (``torch_ref.TorchAttention``) reads an e4m3 ring too: it dequantizes the window and attends it in the model
  dtype, the reference of the cache alone.
- ``torch_fp8``: the FP8 core's arithmetic in torch (``fp8_quant.fp8_core_reference``, tile by tile): Q quantized per
  block, e4m3 QK^T and P.V in fp32. The numerics model of ``triton_fp8``, and what the CPU measures FP8 attention with.
- ``triton_fp8``: the fused FP8 recache write, the pre-pass that rotates and quantizes Q (and, with ``window``
  positions, K), and the FP8 core (``kernels/attention_core_fp8.py``, sm_90a: e4m3 wgmma).

Whole-sequence attention is ``reference``'s SDPA in the model dtype for both, as for every backend.
"""

from __future__ import annotations

import torch

from ..kernels.fp8_constants import E4M3, Q_BLOCK, ROTATED_K_SCALE
from . import reference
from .fp8_quant import fp8_core_reference
from .fp8_ring import chunk_slots, reference_fp8_operands, reference_write_kv_fp8
from .prepass_backend import Scratch, rope_args, triton_ops, write_rope
from .protocol import CacheLayer, Capabilities, check_readable
from .ring import RingView

REFERENCE_BLOCK_N = 128  # key rows per tile in ``torch_fp8``: the GPU kernel's BLOCK_N
FP8_CORE = Capabilities(ring_dtypes=(E4M3,), fp8_core=True)


class TorchFp8Attention:
    name = "torch_fp8"
    capabilities = FP8_CORE
    self_attention = staticmethod(reference.self_attention)
    cross_attention = staticmethod(reference.cross_attention)
    downsample_patches = staticmethod(reference.downsample_patches)

    def __init__(self, block_n: int = REFERENCE_BLOCK_N):
        self.block_n = block_n

    def write_kv(self, layer: CacheLayer, view: RingView, k_proj, v_proj, norm_k) -> None:
        check_readable(self, layer)
        reference_write_kv_fp8(layer, view, k_proj, v_proj, norm_k)

    def ring_attention(self, q: torch.Tensor, layer: CacheLayer, view: RingView) -> torch.Tensor:
        check_readable(self, layer)
        q8, qs, k8, ks, v8, vs, k_mult = reference_fp8_operands(q, layer, view)
        return fp8_core_reference(q8, qs, k8, ks, v8, vs, self.block_n, k_mult, out_dtype=q.dtype)


class TritonFp8Attention:
    """The Triton FP8 path: fused e4m3 recache write, FP8 pre-pass, FP8 core; downsampling by the Triton kernel."""

    name = "triton_fp8"
    capabilities = FP8_CORE
    self_attention = staticmethod(reference.self_attention)
    cross_attention = staticmethod(reference.cross_attention)

    def __init__(self):
        self.ops = triton_ops()
        self.scratch = Scratch()

    def write_kv(self, layer: CacheLayer, view: RingView, k_proj, v_proj, norm_k) -> None:
        from ..kernels.recache_write_fp8 import recache_write_fp8

        check_readable(self, layer)
        recache_write_fp8(k_proj.contiguous(), v_proj.contiguous(), getattr(norm_k, "weight", None), getattr(norm_k, "eps", 0.0),
                          view.write_rows, chunk_slots(view), view.tokens_per_frame, layer.k, layer.v, layer.k_scale,
                          layer.v_scale, write_rope(view, layer.k.shape[-1]))

    def prepass(self, q: torch.Tensor, layer: CacheLayer, view: RingView) -> tuple:
        """The FP8 core's inputs: (q8 ``[B, H, Lq, D]`` e4m3, q_scale ``[B, H, Lq / 64]``, k8 ``[B, H, Lk, D]`` e4m3,
        k_scale ``[B, NV, H]``, v_t ``[B, H, D, Lk]`` e4m3, v_scale ``[B, NV, H]``, k_mult, out dtype); apart from
        ``core`` so that ``bench/attention.py`` can time the two."""
        from ..kernels.attention_core_fp8 import fp8_prepass

        B, Lq, H, D = q.shape
        R, Lk, nv = layer.k.shape[1], view.key_tokens, len(view.slots)
        cos, sin, grid, pairs = rope_args(view, D)
        q8 = self.scratch((B, H, Lq, D), layer.k, "q8")  # [B, H, Lq, D] e4m3
        q_scale = self.scratch((B, H, -(-Lq // Q_BLOCK)), layer.k_scale, "q_scale")  # [B, H, Lq / 64] float32
        ks, vs = layer.k_scale[:, :nv], layer.v_scale[:, :nv]  # [B, NV, H]
        if view.rotated_keys:
            fp8_prepass(q, view.query_position_index, cos, sin, grid, pairs, q8, q_scale)
            k8, k_mult = layer.k[:, :Lk].transpose(1, 2), 1.0
        else:
            k_rot = self.scratch((B, H, R, D), layer.k, "k8")  # [B, H, R, D] e4m3, slot order
            fp8_prepass(q, view.query_position_index, cos, sin, grid, pairs, q8, q_scale, layer.k, ks, view.slot_position_index, k_rot)
            k8, k_mult = k_rot[:, :, :Lk], ROTATED_K_SCALE
        v_t = layer.v[:, :Lk].permute(0, 2, 3, 1)  # [B, H, D, Lk], keys contiguous
        return q8, q_scale, k8, ks, v_t, vs, k_mult, q.dtype

    @staticmethod
    def core(q8, q_scale, k8, k_scale, v_t, v_scale, k_mult, out_dtype) -> torch.Tensor:  # [B, Lq, H, D]
        from ..kernels.attention_core_fp8 import attention_core_fp8

        return attention_core_fp8(q8, q_scale, k8, k_scale, v_t, v_scale, k_mult, out_dtype=out_dtype)

    def ring_attention(self, q: torch.Tensor, layer: CacheLayer, view: RingView) -> torch.Tensor:
        check_readable(self, layer)
        return self.core(*self.prepass(q, layer, view))

    def downsample_patches(self, x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
        return self.ops.downsample_patchify(x, factor, patch_size)
