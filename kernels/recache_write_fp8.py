"""The recache write into an e4m3 ring: K RMSNorm (-> RoPE where positions never change) and V, quantized with one scale
per (frame slot, head), in two launches of one kernel.

A frame's scale needs the amax over all its tokens, which many programs hold: the first launch (``STORE=False``)
reduces each program's tokens per head and ``atomic_max``es ``amax / 448`` into the slot's scale (set to the floor
just before); the second recomputes the same K and V (a few FLOPs per loaded byte: cheaper than a round trip of
fp32 scratch) and stores them quantized. V's storage is transposed (keys contiguous, ``runtime.kv_cache``), so its
stores take a D stride. ``histream_engine.attention.fp8_ring.reference_write_kv_fp8`` is the reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .launch_checks import check_recache_write_fp8
from .e4m3 import to_e4m3
from .fp8_constants import E4M3_MAX, SCALE_FLOOR
from .rope_rotate import rope_rotate

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
RECACHE_BLOCK_T = 16 if INTERPRET else 4  # tokens per program, as the bf16 write
_E4M3_MAX = tl.constexpr(E4M3_MAX)  # what jitted code may read as a global


@triton.jit
def _recache_write_fp8_kernel(
    KProj,  # [B, L, H*D] K projection before RMSNorm (rows contiguous)
    VProj,  # [B, L, H*D]
    Weight,  # [H*D] RMSNorm weight (unused when APPLY_NORM is False)
    Rows,  # [L] int64 destination row of each token in the ring storage
    KStore,  # [B, R, H, D] e4m3, last dim contiguous
    VStore,  # [B, R, H, D] e4m3, any strides (transposed storage: rows contiguous)
    KScale,  # [B, slots, H] float32, heads contiguous
    VScale,  # [B, slots, H] float32
    Pos,  # [L / S] int32 temporal position of each frame of the chunk (unused when ROTATE is False)
    Cos,  # [NPOS, D/2] float32 (unused when ROTATE is False)
    Sin,  # [NPOS, D/2] float32
    stride_kb, stride_kl, stride_vb, stride_vl,
    stride_sb, stride_sl, stride_sh, stride_tb, stride_tl, stride_th, stride_td,
    stride_cb, stride_cs,
    L, S, GW, eps,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_H: tl.constexpr,  # next power of two >= H
    APPLY_NORM: tl.constexpr,
    ROTATE: tl.constexpr,
    STORE: tl.constexpr,  # False: reduce scales; True: quantize and store
    ROUND_FIRST: tl.constexpr,  # the CPU interpreter's cast needs pre-rounded values (kernels/e4m3.py)
    PT: tl.constexpr, PH: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    head = tl.arange(0, BLOCK_H)
    heads = head[:, None]
    dims = tl.arange(0, D)[None, :]
    ch = heads * D + dims  # [BLOCK_H, D] channel of each element in a projection row
    t_ok = tok < L
    ok = t_ok[:, None, None] & (ch < H * D)[None, :, :]
    row = tl.load(Rows + tok, mask=t_ok, other=0)
    k = tl.load(KProj + b * stride_kb + tok[:, None, None].to(tl.int64) * stride_kl + ch[None, :, :], mask=ok, other=0.0)
    if APPLY_NORM:
        kf = k.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(kf * kf, 2), 1) / (H * D) + eps)
        w = tl.load(Weight + ch, mask=ch < H * D, other=0.0)
        k = (kf * rstd[:, None, None]).to(KProj.dtype.element_ty) * w.to(KProj.dtype.element_ty)[None, :, :]
    k = k.to(tl.float32)
    if ROTATE:
        t = tl.load(Pos + tok // S, mask=t_ok, other=0)
        k = rope_rotate(k, t, tok % S, Cos, Sin, GW, D // 2, PT, PH)
    v = tl.load(VProj + b * stride_vb + tok[:, None, None].to(tl.int64) * stride_vl + ch[None, :, :], mask=ok, other=0.0).to(tl.float32)
    sc = b * stride_cb + (row // S)[:, None] * stride_cs + head[None, :]  # [BLOCK_T, BLOCK_H] scale of each token's (slot, head)
    sc_ok = t_ok[:, None] & (head < H)[None, :]
    if STORE:
        ks = tl.load(KScale + sc, mask=sc_ok, other=1.0)[:, :, None]
        vs = tl.load(VScale + sc, mask=sc_ok, other=1.0)[:, :, None]
        k8 = to_e4m3(tl.clamp(k / ks, -_E4M3_MAX, _E4M3_MAX), KStore.dtype.element_ty, ROUND_FIRST)
        v8 = to_e4m3(tl.clamp(v / vs, -_E4M3_MAX, _E4M3_MAX), VStore.dtype.element_ty, ROUND_FIRST)
        tl.store(KStore + b * stride_sb + row[:, None, None] * stride_sl + (heads * stride_sh + dims)[None, :, :], k8, mask=ok)
        tl.store(VStore + b * stride_tb + row[:, None, None] * stride_tl + (heads * stride_th + dims * stride_td)[None, :, :], v8, mask=ok)
    else:
        tl.atomic_max(KScale + sc, tl.max(tl.abs(k), 2) / _E4M3_MAX, mask=sc_ok)
        tl.atomic_max(VScale + sc, tl.max(tl.abs(v), 2) / _E4M3_MAX, mask=sc_ok)


def recache_write_fp8(
    k_proj: torch.Tensor,  # [B, L, C] K projection before RMSNorm
    v_proj: torch.Tensor,  # [B, L, C]
    norm_weight: torch.Tensor | None,  # [C], None when the model has no qk norm
    eps: float,
    rows: torch.Tensor,  # [L] int64 destination rows (whole frames)
    slots: torch.Tensor,  # [L / S] int64 ring slot of each frame
    tokens_per_frame: int,
    k_store: torch.Tensor,  # [B, R, H, D] e4m3, H * D = C
    v_store: torch.Tensor,  # [B, R, H, D] e4m3, any strides
    k_scale: torch.Tensor,  # [B, slots, H] float32
    v_scale: torch.Tensor,  # [B, slots, H] float32
    rope: tuple | None = None,  # store K rotated: (positions [L/S] int32, cos [NPOS, D/2], sin, (gh, gw), (t, h, w) pairs)
) -> None:
    shape = check_recache_write_fp8(k_proj, v_proj, norm_weight, rows, slots, tokens_per_frame, k_store, v_store, k_scale, v_scale, rope)
    B, L, H, D, gw, pairs = shape.B, shape.L, shape.H, shape.D, shape.gw, shape.pairs
    if k_proj.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("recache_write_fp8 needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    for scale in (k_scale, v_scale):
        scale.index_fill_(1, slots, SCALE_FLOOR)  # the atomic max starts from the floor: no stale amax survives
    pos, cos, sin = rope[:3] if rope is not None else (rows, k_proj, k_proj)  # never read without ROTATE
    for store in (False, True):
        _recache_write_fp8_kernel[(triton.cdiv(L, RECACHE_BLOCK_T), B)](
            k_proj, v_proj, norm_weight if norm_weight is not None else k_proj, rows, k_store, v_store, k_scale, v_scale, pos, cos, sin,
            k_proj.stride(0), k_proj.stride(1), v_proj.stride(0), v_proj.stride(1),
            k_store.stride(0), k_store.stride(1), k_store.stride(2),
            v_store.stride(0), v_store.stride(1), v_store.stride(2), v_store.stride(3),
            k_scale.stride(0), k_scale.stride(1),
            L, tokens_per_frame, gw, eps,
            H=H, D=D, BLOCK_H=triton.next_power_of_2(H), APPLY_NORM=norm_weight is not None, ROTATE=rope is not None,
            STORE=store, ROUND_FIRST=INTERPRET, PT=pairs[0], PH=pairs[1], BLOCK_T=RECACHE_BLOCK_T,
        )
