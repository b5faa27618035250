"""An e4m3 ring cache in plain torch: the reference write, the dequantized read, and what the FP8 pre-pass hands the
FP8 core. The torch backend reads an e4m3 ring through these, and the Triton FP8 kernels are tested against them.

Each takes one e4m3 ``protocol.CacheLayer``: K and V ``[B, rows, H, D]`` e4m3 views (V's D strided, see
``runtime.cache.kv_cache``), scales ``[B, slots, H]`` float32.
"""

from __future__ import annotations

import torch

from ..kernels.fp8_constants import ROTATED_K_SCALE
from .fp8_quant import dequantize_frames, quantize, quantize_frames, quantize_q_blocks
from .protocol import CacheLayer
from .ring import RingView
from .rope import apply_rope


def chunk_slots(view: RingView) -> torch.Tensor:
    """Ring slots of the chunk's frames, in its frame order: ``[M]`` long (from the loadable ``write_rows``)."""
    S = view.tokens_per_frame
    return view.write_rows[::S] // S


def reference_write_kv_fp8(layer: CacheLayer, view: RingView, k_proj, v_proj, norm_k) -> None:
    H, D = layer.k.shape[2:]
    S = view.tokens_per_frame
    k = norm_k(k_proj).unflatten(-1, (H, D)).float()  # [B, M*S, H, D]; RMSNorm's output in the model dtype, as the kernel
    if view.rotated_keys:
        k = apply_rope(k, *view.q_rope)
    rows, slots = view.write_rows, chunk_slots(view)
    for store, scales, x in ((layer.k, layer.k_scale, k), (layer.v, layer.v_scale, v_proj.unflatten(-1, (H, D)))):
        x8, s = quantize_frames(x, S)  # [B, M*S, H, D], [B, M, H]
        store.view(torch.uint8).index_copy_(1, rows, x8.view(torch.uint8))  # index_copy_ has no float8 kernel
        scales.index_copy_(1, slots, s)


def dequantized_kv(layer: CacheLayer, view: RingView, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's K and V ``[B, Lk, H, D]`` in ``dtype``, slot order, K as stored (rotated or not)."""
    nv, Lk = len(view.slots), view.key_tokens
    return (dequantize_frames(layer.k[:, :Lk], layer.k_scale[:, :nv], dtype),
            dequantize_frames(layer.v[:, :Lk], layer.v_scale[:, :nv], dtype))


def reference_fp8_operands(q, layer: CacheLayer, view: RingView):
    """What the FP8 pre-pass hands the core, in torch: (q8, q_scale, k8, k_scale, v8, v_scale, k_mult), ``[B, H, L, D]``.

    With ``window`` positions K is dequantized, rotated and quantized again with its slot's scale times
    ``ROTATED_K_SCALE`` (passed on as ``k_mult``), so the core reads one scale per slot either way."""
    nv, Lk = len(view.slots), view.key_tokens
    q8, q_scale = quantize_q_blocks(apply_rope(q, *view.q_rope).transpose(1, 2))
    ks, vs = layer.k_scale[:, :nv], layer.v_scale[:, :nv]  # [B, NV, H]
    if view.rotated_keys:
        k8, k_mult = layer.k[:, :Lk], 1.0
    else:
        k = apply_rope(dequantize_frames(layer.k[:, :Lk], ks, torch.float32), *view.slot_rope)  # [B, Lk, H, D]
        B, _, H, D = k.shape
        scale = (ks * ROTATED_K_SCALE).repeat_interleave(view.tokens_per_frame, dim=1)[..., None]  # [B, Lk, H, 1]
        k8, k_mult = quantize(k, scale), ROTATED_K_SCALE
    return q8, q_scale, k8.transpose(1, 2), ks, layer.v[:, :Lk].transpose(1, 2), vs, k_mult
