"""FP8 attention over an e4m3 ring for sm_90a, and the pre-pass that feeds it, as FlashAttention-3's FP8 forward runs.

- ``fp8_prepass``: rotates the chunk's Q (RoPE, as ``rope_prepass``) and quantizes it with one scale per
  (head, ``Q_BLOCK`` rows); with ``window`` positions it also rotates the visible K (dequantized by its slot's scale)
  and quantizes it again with that scale times sqrt(2), which bounds any rotated pair.
- ``attention_core_fp8``: per frame slot of the window (K and V scales are per slot and head) and per key tile,
  ``S = Q8 K8^T`` is an e4m3 wgmma accumulating in fp32; one row factor (Q's block scale x K's slot scale x softmax
  scale) turns it into log2 units inside the online softmax's exp2, which also carries P's x256 (``P_SHIFT``): P in
  [0, 256] is cast to e4m3 and ``acc += P8 V8`` is a second e4m3 wgmma. The accumulator is kept in units of the
  current slot's V scale: it is rescaled once when the slot changes and the last scale is applied at the end, so no
  scale touches a tile's elements beyond the one multiply-add the exp2 already needs.

FP8 wgmma takes both operands K-major. For QK^T both K and Q are (D contiguous). For P.V the reduction runs over the
keys, so V must be keys-contiguous: the ring stores V transposed (``runtime.kv_cache``) and the core reads ``[B, H,
D, Lk]`` tiles. ``kernels.aot`` compiles the other layout too (``V_KMAJOR=False``, V ``[B, H, Lk, D]`` as the bf16
core reads it) to show what it costs. ``histream_engine.attention.fp8_quant.fp8_core_reference`` is the block
algorithm in torch.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .launch_checks import check_16_byte_aligned, check_attention_core_fp8, check_fp8_prepass
from .e4m3 import to_e4m3
from .fp8_constants import E4M3_MAX, P_SHIFT, Q_BLOCK, ROTATED_K_SCALE, SCALE_FLOOR
from .rope_rotate import rope_rotate

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# the same values as constexprs, which jitted code may read as globals
_E4M3_MAX, _SCALE_FLOOR, _Q_BLOCK = tl.constexpr(E4M3_MAX), tl.constexpr(SCALE_FLOOR), tl.constexpr(Q_BLOCK)
_P_SHIFT, _ROTATED_K_SCALE = tl.constexpr(P_SHIFT), tl.constexpr(ROTATED_K_SCALE)

# (BLOCK_M, BLOCK_N, num_warps, num_stages): each compiles for sm_90a with no spills, e4m3 wgmmas (SASS QGMMA) in
# its key loop and issue_over_tensor 1.06 at the FP8 rate (kernels/aot.py): over the 0.7 aimed for. The softmax's five
# instructions per score and the accumulator's rescale issue longer than the FP8 wgmmas take; BLOCK_N = 64 is worse
# (1.42) and 256 spills. Closing it takes what FlashAttention-3 does: warp-specialised producer/consumer ping-pong.
CONFIGS = ((128, 128, 8, 2), (128, 128, 8, 3))
INTERPRET_CONFIG = (32, 32, 4, 1)


# ---------- the pre-pass ------------------------------------------------------------------------

@triton.jit
def _fp8_prepass_kernel(
    Q,  # [B, Lq, H, D] chunk queries after RMSNorm, un-rotated
    KStore,  # [B, R, H, D] e4m3 ring K, un-rotated (unused when Lk == 0)
    KScale,  # [B, NV, H] float32 slot scales of the ring K
    Q8,  # [B, H, Lq, D] e4m3, rotated and quantized
    QScale,  # [B, H, ceil(Lq / BLOCK_T)] float32
    K8,  # [B, H, R, D] e4m3, rotated, rows [0, Lk) written in ring slot order
    QPos,  # [Lq / S] int32
    SlotPos,  # [NV] int32
    Cos,  # [NPOS, HALF] float32
    Sin,  # [NPOS, HALF] float32
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_cb, stride_cs,
    Lq, Lk, R, S, GW, H, q_blocks,
    HALF: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, BLOCK_T: tl.constexpr,
    ROUND_FIRST: tl.constexpr,  # the CPU interpreter's cast needs pre-rounded values (kernels/e4m3.py)
):
    pid = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    dims = tl.arange(0, 2 * HALF)
    if pid < q_blocks:
        r = pid * BLOCK_T + tl.arange(0, BLOCK_T)
        ok = r < Lq
        t = tl.load(QPos + r // S, mask=ok, other=0)
        src = Q + b.to(tl.int64) * stride_qb + h * stride_qh + r[:, None].to(tl.int64) * stride_ql + dims[None, :]
        x = tl.load(src, mask=ok[:, None], other=0.0).to(tl.float32)  # [BLOCK_T, D]
        y = tl.reshape(rope_rotate(tl.reshape(x, (BLOCK_T, 1, 2 * HALF)), t, r % S, Cos, Sin, GW, HALF, PT, PH), (BLOCK_T, 2 * HALF))
        scale = tl.maximum(tl.max(tl.max(tl.abs(y), 1), 0) / _E4M3_MAX, _SCALE_FLOOR)
        dst = Q8 + ((b * H + h).to(tl.int64) * Lq + r[:, None].to(tl.int64)) * (2 * HALF) + dims[None, :]
        tl.store(dst, to_e4m3(tl.clamp(y / scale, -_E4M3_MAX, _E4M3_MAX), Q8.dtype.element_ty, ROUND_FIRST), mask=ok[:, None])
        tl.store(QScale + (b * H + h) * q_blocks + pid, scale)
    else:
        r = (pid - q_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)
        ok = r < Lk
        t = tl.load(SlotPos + r // S, mask=ok, other=0)
        ks = tl.load(KScale + b * stride_cb + (r // S) * stride_cs + h, mask=ok, other=1.0)  # [BLOCK_T]
        k_src = KStore + b.to(tl.int64) * stride_kb + h * stride_kh + r[:, None].to(tl.int64) * stride_kl + dims[None, :]
        x = tl.load(k_src, mask=ok[:, None], other=0.0).to(tl.float32) * ks[:, None]
        y = tl.reshape(rope_rotate(tl.reshape(x, (BLOCK_T, 1, 2 * HALF)), t, r % S, Cos, Sin, GW, HALF, PT, PH), (BLOCK_T, 2 * HALF))
        y = y / (ks * _ROTATED_K_SCALE)[:, None]
        k_dst = K8 + ((b * H + h).to(tl.int64) * R + r[:, None].to(tl.int64)) * (2 * HALF) + dims[None, :]
        tl.store(k_dst, to_e4m3(tl.clamp(y, -_E4M3_MAX, _E4M3_MAX), K8.dtype.element_ty, ROUND_FIRST), mask=ok[:, None])


def fp8_prepass(
    q: torch.Tensor,  # [B, Lq, H, D] chunk queries, un-rotated
    q_pos: torch.Tensor,  # [Lq / S] int32
    cos: torch.Tensor,  # [NPOS, D/2] float32
    sin: torch.Tensor,  # [NPOS, D/2] float32
    grid: tuple[int, int],  # (gh, gw)
    axis_pairs: tuple[int, int, int],
    q8: torch.Tensor,  # [B, H, Lq, D] e4m3, written
    q_scale: torch.Tensor,  # [B, H, ceil(Lq / Q_BLOCK)] float32, written
    k_store: torch.Tensor | None = None,  # [B, R, H, D] e4m3 ring K, un-rotated; None: Q only
    k_scale: torch.Tensor | None = None,  # [B, NV, H] float32
    slot_pos: torch.Tensor | None = None,  # [NV] int32
    k8: torch.Tensor | None = None,  # [B, H, R, D] e4m3, rows [0, NV*S) written
) -> None:
    shape = check_fp8_prepass(q, q_pos, cos, sin, grid, axis_pairs, q8, q_scale, Q_BLOCK, k_store, k_scale, slot_pos, k8)
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("fp8_prepass needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    B, Lq, H, D, S, R = shape.B, shape.Lq, shape.H, shape.D, shape.S, shape.R
    with_k = k_store is not None
    k_src, k_sc = (k_store, k_scale) if with_k else (q8, q_scale)  # never read when Lk == 0
    q_blocks = triton.cdiv(Lq, Q_BLOCK)
    _fp8_prepass_kernel[(q_blocks + triton.cdiv(shape.Lk, Q_BLOCK), B * H)](
        q, k_src, k_sc, q8, q_scale, k8 if with_k else q8, q_pos, slot_pos if with_k else q_pos, cos, sin,
        q.stride(0), q.stride(1), q.stride(2),
        k_src.stride(0), k_src.stride(1), k_src.stride(2),
        k_sc.stride(0), k_sc.stride(1),
        Lq, shape.Lk, max(R, 1), S, grid[1], H, q_blocks,
        HALF=D // 2, PT=axis_pairs[0], PH=axis_pairs[1], BLOCK_T=Q_BLOCK, ROUND_FIRST=INTERPRET,
    )


# ---------- the core ----------------------------------------------------------------------------

def _set_block_shapes(nargs):
    bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["D"]
    nargs["desc_q"].block_shape = [1, 1, bm, d]
    nargs["desc_k"].block_shape = [1, 1, bn, d]
    nargs["desc_v"].block_shape = [1, 1, d, bn] if nargs["V_KMAJOR"] else [1, 1, bn, d]


def _configs():
    chosen = (INTERPRET_CONFIG,) if INTERPRET else CONFIGS
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_set_block_shapes) for bm, bn, w, s in chosen]


@triton.jit
def _attend_block_fp8(q, desc_k, desc_v, b, h, n0, start, end, m_i, l_i, acc, row,
                      MASK: tl.constexpr, V_KMAJOR: tl.constexpr, ROUND_FIRST: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One key tile: e4m3 QK^T, online softmax in log2 units (``row`` folds every scale), e4m3 P.V. ``MASK``: keys
    outside the slot's rows ``[start, end)`` (the tiles at its two ends) are excluded."""
    k = desc_k.load([b, h, n0, 0]).reshape(BLOCK_N, D)
    s = tl.dot(q, k.T)  # [BLOCK_M, BLOCK_N] float32
    if MASK:
        cols = n0 + tl.arange(0, BLOCK_N)
        s = tl.where(((cols >= start) & (cols < end))[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * row)
    p = tl.math.exp2(s * row[:, None] - (m_new - _P_SHIFT)[:, None])  # [0, 256]
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if V_KMAJOR:
        v = desc_v.load([b, h, 0, n0]).reshape(D, BLOCK_N).T
    else:
        v = desc_v.load([b, h, n0, 0]).reshape(BLOCK_N, D)
    acc = tl.dot(to_e4m3(p, v.dtype, ROUND_FIRST), v, acc * alpha[:, None])
    return m_new, l_i, acc


@triton.autotune(configs=_configs(), key=["D", "Lq", "S"])
@triton.jit
def _attention_core_fp8_kernel(
    desc_q,  # [B, H, Lq, D] e4m3 rotated queries
    desc_k,  # [B, H, Lk, D] e4m3 rotated keys, ring slot order
    desc_v,  # [B, H, D, Lk] e4m3 values, keys contiguous (V_KMAJOR); else [B, H, Lk, D]
    QScale,  # [B, H, ceil(Lq / _Q_BLOCK)] float32
    KScale,  # [B, NV, H] float32
    VScale,  # [B, NV, H] float32
    Out,  # [B, Lq, H, D]
    stride_ob, stride_ol, stride_oh,
    stride_kb, stride_ks, stride_vb, stride_vs,
    Lq, S, NV, H,  # query tokens, tokens per frame, visible slots, heads
    qk_scale,  # softmax scale * log2(e) * the K scale multiplier of re-quantized K
    D: tl.constexpr,
    V_KMAJOR: tl.constexpr,
    ROUND_FIRST: tl.constexpr,  # the CPU interpreter's cast needs pre-rounded values (kernels/e4m3.py)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    m0 = pid_m * BLOCK_M
    q = desc_q.load([b, h, m0, 0]).reshape(BLOCK_M, D)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    nqb = tl.cdiv(Lq, _Q_BLOCK)
    q_row = tl.load(QScale + pid_bh * nqb + offs_m // _Q_BLOCK, mask=offs_m < Lq, other=1.0) * qk_scale  # [BLOCK_M]

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    vs_prev = tl.load(VScale + b * stride_vb + h)
    for f in range(0, NV):
        ks = tl.load(KScale + b * stride_kb + f * stride_ks + h)
        vs = tl.load(VScale + b * stride_vb + f * stride_vs + h)
        acc = acc * (vs_prev / vs)  # acc in units of this slot's V scale
        vs_prev = vs
        row = q_row * ks
        # Tiles start 16-aligned (a TMA tile of keys-contiguous V begins on a 16-byte boundary): a slot that starts
        # off it (S % 16 != 0) gets a masked head tile, and one that ends off a whole tile a masked tail tile.
        start = f * S
        end = start + S
        a0 = start - start % 16
        lo = a0
        if a0 < start:
            m_i, l_i, acc = _attend_block_fp8(q, desc_k, desc_v, b, h, a0, start, end, m_i, l_i, acc, row,
                                              MASK=True, V_KMAJOR=V_KMAJOR, ROUND_FIRST=ROUND_FIRST, BLOCK_N=BLOCK_N, D=D)
            lo = a0 + BLOCK_N
        hi = lo + tl.maximum(end - lo, 0) // BLOCK_N * BLOCK_N
        for n0 in range(lo, hi, BLOCK_N):
            m_i, l_i, acc = _attend_block_fp8(q, desc_k, desc_v, b, h, n0, start, end, m_i, l_i, acc, row,
                                              MASK=False, V_KMAJOR=V_KMAJOR, ROUND_FIRST=ROUND_FIRST, BLOCK_N=BLOCK_N, D=D)
        if hi < end:
            m_i, l_i, acc = _attend_block_fp8(q, desc_k, desc_v, b, h, hi, start, end, m_i, l_i, acc, row,
                                              MASK=True, V_KMAJOR=V_KMAJOR, ROUND_FIRST=ROUND_FIRST, BLOCK_N=BLOCK_N, D=D)

    dims = tl.arange(0, D)
    out = acc * (vs_prev / l_i)[:, None]
    o_ptr = Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ol + dims[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=(offs_m < Lq)[:, None])


SUPPORTED_HEAD_DIMS = (32, 64, 128)  # e4m3 wgmma reduces 32 at a time


def _descriptor(t: torch.Tensor, name: str) -> TensorDescriptor:
    check_16_byte_aligned(name, t)
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, 16, 16])  # tile set per config


def attention_core_fp8(
    q8: torch.Tensor,  # [B, H, Lq, D] e4m3 rotated queries (``fp8_prepass``)
    q_scale: torch.Tensor,  # [B, H, ceil(Lq / Q_BLOCK)] float32
    k8: torch.Tensor,  # [B, H, Lk, D] e4m3 rotated keys (ring or pre-pass scratch), Lk = NV * S
    k_scale: torch.Tensor,  # [B, NV, H] float32
    v_t: torch.Tensor,  # [B, H, D, Lk] e4m3 values, keys contiguous (a view of the transposed ring)
    v_scale: torch.Tensor,  # [B, NV, H] float32
    k_mult: float = 1.0,  # ROTATED_K_SCALE where the pre-pass re-quantized K
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,  # [B, Lq, H, D]
) -> torch.Tensor:  # [B, Lq, H, D]
    B, H, Lq, D = q8.shape
    check_attention_core_fp8(q8, q_scale, Q_BLOCK, k8, k_scale, v_t, v_scale, SUPPORTED_HEAD_DIMS)
    if q8.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("attention_core_fp8 needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    NV = k_scale.shape[1]
    S = k8.shape[2] // NV
    descs = [_descriptor(t, name) for t, name in ((q8, "q8"), (k8, "k8"), (v_t, "v_t"))]
    if out is None:
        out = torch.empty((B, Lq, H, D), dtype=out_dtype, device=q8.device)

    def grid(meta):
        return (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)

    _attention_core_fp8_kernel[grid](
        *descs, q_scale, k_scale, v_scale, out,
        out.stride(0), out.stride(1), out.stride(2),
        k_scale.stride(0), k_scale.stride(1), v_scale.stride(0), v_scale.stride(1),
        Lq, S, NV, H,
        k_mult * math.log2(math.e) / math.sqrt(D),
        D=D, V_KMAJOR=True, ROUND_FIRST=INTERPRET,
    )
    return out
