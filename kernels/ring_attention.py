"""Flash-style attention of a chunk's queries over a ring-buffer KV cache, with the 3D RoPE fused in.

K/V are read straight from the ring storage (anchor slots + circular window, the chunk's own K/V
already written into its slots): key token j of the window lives in frame j // S, at storage row
``slot[frame] * S + j % S``. Q and K are stored un-rotated; both are rotated in registers from their
(frame position, h, w) with a precomputed per-position cos/sin table, so re-indexed (``window``) and
NTK-scaled positions cost nothing extra. Pairs are interleaved (x[2i], x[2i+1]); the even and odd
halves are loaded separately so that q.k = q_re.k_re + q_im.k_im is two half-width dots.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs():
    if INTERPRET:  # the interpreter cannot benchmark: one config; tests use sizes that leave partial blocks
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in ((128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 2))
    ]


@triton.autotune(configs=_configs(), key=["HALF", "PT", "PH", "PRECISION"])
@triton.jit
def _ring_attention_kernel(
    Q,  # [B, Lq, H, D] chunk queries, un-rotated (last dim contiguous)
    K,  # [B, slots*S, H, D] ring storage of one layer, un-rotated
    V,  # [B, slots*S, H, D] ring storage of one layer
    Out,  # [B, Lq, H, D]
    Slot,  # [NV] int32: ring slot of each visible frame, in window order
    FramePos,  # [NV] int32: temporal RoPE position of each visible frame
    Cos,  # [NPOS, HALF] float32: cos(p * freq_i) for position p, pair i
    Sin,  # [NPOS, HALF] float32
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_ob, stride_ol, stride_oh,
    Lq, Lk, S, GW, H, QF0,  # query/key tokens, tokens per frame, grid width, heads, first query frame
    qk_scale,  # softmax scale * log2(e)
    HALF: tl.constexpr,  # head_dim // 2
    PT: tl.constexpr,  # rotation pairs driven by the temporal position
    PH: tl.constexpr,  # pairs driven by h (the rest by w)
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" for fp32 inputs, "tf32" otherwise (ignored for fp16/bf16)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    pair = tl.arange(0, HALF)
    dims = tl.arange(0, 2 * HALF)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Lq
    q_tok = offs_m % S
    q_t = tl.load(FramePos + QF0 + offs_m // S, mask=m_ok, other=0)
    q_row = tl.where(pair[None, :] < PT, q_t[:, None], tl.where(pair[None, :] < PT + PH, (q_tok // GW)[:, None], (q_tok % GW)[:, None]))
    q_cos = tl.load(Cos + q_row * HALF + pair[None, :])
    q_sin = tl.load(Sin + q_row * HALF + pair[None, :])
    q_ptr = Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_ql
    q_even = tl.load(q_ptr + 2 * pair[None, :], mask=m_ok[:, None], other=0.0).to(tl.float32)
    q_odd = tl.load(q_ptr + 2 * pair[None, :] + 1, mask=m_ok[:, None], other=0.0).to(tl.float32)
    # Rotate, round to the input dtype (as the unfused path does), then fold in the softmax scale.
    q_re = (q_even * q_cos - q_odd * q_sin).to(Q.dtype.element_ty)
    q_im = (q_even * q_sin + q_odd * q_cos).to(Q.dtype.element_ty)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, 2 * HALF), tl.float32)
    for start in range(0, Lk, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Lk
        k_frame = offs_n // S
        k_tok = offs_n % S
        slot = tl.load(Slot + k_frame, mask=n_ok, other=0)
        k_t = tl.load(FramePos + k_frame, mask=n_ok, other=0)
        row = (slot * S + k_tok).to(tl.int64)  # storage row of each key token
        k_row = tl.where(pair[None, :] < PT, k_t[:, None], tl.where(pair[None, :] < PT + PH, (k_tok // GW)[:, None], (k_tok % GW)[:, None]))
        k_cos = tl.load(Cos + k_row * HALF + pair[None, :])
        k_sin = tl.load(Sin + k_row * HALF + pair[None, :])
        k_ptr = K + b * stride_kb + h * stride_kh + row[:, None] * stride_kl
        k_even = tl.load(k_ptr + 2 * pair[None, :], mask=n_ok[:, None], other=0.0).to(tl.float32)
        k_odd = tl.load(k_ptr + 2 * pair[None, :] + 1, mask=n_ok[:, None], other=0.0).to(tl.float32)
        k_re = (k_even * k_cos - k_odd * k_sin).to(K.dtype.element_ty)
        k_im = (k_even * k_sin + k_odd * k_cos).to(K.dtype.element_ty)

        scores = tl.dot(q_re, tl.trans(k_re), input_precision=PRECISION)
        scores += tl.dot(q_im, tl.trans(k_im), input_precision=PRECISION)
        scores = tl.where(n_ok[None, :], scores * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.math.exp2(scores - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * stride_vb + h * stride_vh + row[:, None] * stride_vl + dims[None, :], mask=n_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(V.dtype.element_ty), v, input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptr = Out + b * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ol + dims[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=m_ok[:, None])


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (32, 64, 128)


def ring_attention(
    q: torch.Tensor,  # [B, Lq, H, D] chunk queries, un-rotated
    k_store: torch.Tensor,  # [B, slots*S, H, D] one layer's ring storage
    v_store: torch.Tensor,  # [B, slots*S, H, D]
    slots: torch.Tensor,  # [NV] int32 slot of each visible frame, window order; the queries are the last Lq/S frames
    frame_pos: torch.Tensor,  # [NV] int32 temporal position of each visible frame
    cos: torch.Tensor,  # [NPOS, D/2] float32, rows indexed by position
    sin: torch.Tensor,  # [NPOS, D/2] float32
    grid: tuple[int, int],  # (gh, gw) tokens per frame
    axis_pairs: tuple[int, int, int],  # rotation pairs per (t, h, w) axis
    out: torch.Tensor | None = None,  # [B, Lq, H, D]
) -> torch.Tensor:
    """Attention of ``q`` over the visible frames of a ring cache.

    Slot and position values are not read back here (that would stall the GPU every layer): the caller
    builds them from Python lists and checks their ranges there (``histream_engine.attention.ring.RingView``).
    """
    B, Lq, H, D = q.shape
    gh, gw = grid
    S = gh * gw
    nv = slots.numel()
    if q.dtype not in SUPPORTED_DTYPES or k_store.dtype != q.dtype or v_store.dtype != q.dtype:
        raise ValueError(f"ring_attention takes fp16/bf16/fp32 q, k, v of one dtype; got {q.dtype}, {k_store.dtype}, {v_store.dtype}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"ring_attention supports head_dim {SUPPORTED_HEAD_DIMS}, got {D}")
    if k_store.shape != v_store.shape or k_store.shape[0] != B or k_store.shape[2:] != (H, D) or k_store.shape[1] % S:
        raise ValueError(f"ring storage {tuple(k_store.shape)} does not fit q {tuple(q.shape)} with {S} tokens per frame")
    if Lq % S or Lq // S > nv or frame_pos.numel() != nv:
        raise ValueError(f"{Lq} query tokens must be whole frames of {S} tokens among the {nv} visible frames")
    if slots.dtype != torch.int32 or frame_pos.dtype != torch.int32:
        raise ValueError("slots and frame_pos must be int32")
    if cos.shape != sin.shape or cos.shape[1] != D // 2 or cos.dtype != torch.float32:
        raise ValueError(f"cos/sin tables must be float32 [NPOS, {D // 2}], got {tuple(cos.shape)} {cos.dtype}")
    if cos.shape[0] < max(gh, gw):
        raise ValueError(f"RoPE table has {cos.shape[0]} positions, fewer than the {gh}x{gw} token grid needs")
    if sum(axis_pairs) != D // 2:
        raise ValueError(f"axis_pairs {axis_pairs} must sum to head_dim / 2 = {D // 2}")
    tensors = (q, k_store, v_store, slots, frame_pos, cos, sin)
    if len({t.device for t in tensors}) != 1:
        raise ValueError("ring_attention inputs must be on one device")
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("ring_attention needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    if any(t.stride(-1) != 1 for t in (q, k_store, v_store)) or not (cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError("q, k_store and v_store need a contiguous last dim; cos/sin must be contiguous")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} with a contiguous last dim")

    def grid_fn(meta):
        return (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)

    _ring_attention_kernel[grid_fn](
        q, k_store, v_store, out, slots, frame_pos, cos, sin,
        q.stride(0), q.stride(1), q.stride(2),
        k_store.stride(0), k_store.stride(1), k_store.stride(2),
        v_store.stride(0), v_store.stride(1), v_store.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        Lq, nv * S, S, gw, H, nv - Lq // S,
        math.log2(math.e) / math.sqrt(D),
        HALF=D // 2, PT=axis_pairs[0], PH=axis_pairs[1],
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out
