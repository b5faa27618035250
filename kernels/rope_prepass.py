"""The RoPE pre-pass: rotate a chunk's queries and its window's keys once per attention call.

Rotating K inside the attention's key loop repeats the rotation for every query block (192 times per key
at 1080p) and keeps the loop from using TMA; rotating once here costs one read and one write of Q and of
the visible K (about 0.45 GB at 1080p, about 1% of the attention's time on an H100, an estimate from
bandwidth). The cache keeps K un-rotated so that ``window`` positions and per-resolution NTK stay free.

Outputs are de-interleaved: pair i's rotated (re, im) go to columns i and HALF + i. Q and K get the same
permutation of the head dim, so q.k is unchanged and every attention core can consume them; V is untouched.
K is written in ring slot order (row r of the output is row r of the ring), so V can be read from the
ring in place.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_T = 64  # rows per program: memory-bound, so tiles only need to be large enough to vectorise


@triton.jit
def _rotate_rows(
    X,  # [B, rows, H, D] un-rotated input (last dim contiguous)
    Out,  # [B, H, out_rows, D] rotated, de-interleaved
    Pos,  # [rows / S] int32 temporal position of each frame of rows
    Cos,  # [NPOS, HALF] float32 cos(p * freq_i)
    Sin,  # [NPOS, HALF] float32
    b, h, H, r0, rows, out_rows,
    stride_xb, stride_xl, stride_xh,
    S, GW,
    HALF: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, BLOCK_T: tl.constexpr,
):
    r = r0 + tl.arange(0, BLOCK_T)
    ok = r < rows
    pair = tl.arange(0, HALF)
    tok = r % S
    t = tl.load(Pos + r // S, mask=ok, other=0)
    pos = tl.where(pair[None, :] < PT, t[:, None], tl.where(pair[None, :] < PT + PH, (tok // GW)[:, None], (tok % GW)[:, None]))
    cos = tl.load(Cos + pos * HALF + pair[None, :])  # [BLOCK_T, HALF]
    sin = tl.load(Sin + pos * HALF + pair[None, :])
    src = X + b.to(tl.int64) * stride_xb + h * stride_xh + r[:, None].to(tl.int64) * stride_xl
    x = tl.load(src + tl.arange(0, 2 * HALF)[None, :], mask=ok[:, None], other=0.0).to(tl.float32)  # [BLOCK_T, D]
    even, odd = tl.split(tl.reshape(x, (BLOCK_T, HALF, 2)))
    dst = Out + ((b * H + h).to(tl.int64) * out_rows + r[:, None].to(tl.int64)) * (2 * HALF) + pair[None, :]
    tl.store(dst, (even * cos - odd * sin).to(Out.dtype.element_ty), mask=ok[:, None])
    tl.store(dst + HALF, (even * sin + odd * cos).to(Out.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _rope_prepass_kernel(
    Q,  # [B, Lq, H, D] chunk queries after RMSNorm, un-rotated
    KStore,  # [B, R, H, D] one layer's ring K storage, un-rotated
    QOut,  # [B, H, Lq, D] rotated, de-interleaved
    KOut,  # [B, H, R, D] rotated, de-interleaved, rows [0, Lk) written, in slot order
    QPos,  # [Lq / S] int32 temporal position of each query frame
    SlotPos,  # [Lk / S] int32 temporal position of the frame held by each visible slot
    Cos,  # [NPOS, HALF] float32
    Sin,  # [NPOS, HALF] float32
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    Lq, Lk, R, S, GW, H, q_blocks,
    HALF: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    if pid < q_blocks:
        _rotate_rows(Q, QOut, QPos, Cos, Sin, b, h, H, pid * BLOCK_T, Lq, Lq, stride_qb, stride_ql, stride_qh,
                     S, GW, HALF, PT, PH, BLOCK_T)
    else:
        _rotate_rows(KStore, KOut, SlotPos, Cos, Sin, b, h, H, (pid - q_blocks) * BLOCK_T, Lk, R,
                     stride_kb, stride_kl, stride_kh, S, GW, HALF, PT, PH, BLOCK_T)


def rope_prepass(
    q: torch.Tensor,  # [B, Lq, H, D] chunk queries, un-rotated (last dim contiguous)
    k_store: torch.Tensor,  # [B, R, H, D] one layer's ring K storage, un-rotated
    q_pos: torch.Tensor,  # [Lq / S] int32 temporal positions of the query frames
    slot_pos: torch.Tensor,  # [NV] int32 temporal position of the frame in each of the ring's first NV slots
    cos: torch.Tensor,  # [NPOS, D/2] float32, rows indexed by position
    sin: torch.Tensor,  # [NPOS, D/2] float32
    grid: tuple[int, int],  # (gh, gw) tokens per frame
    axis_pairs: tuple[int, int, int],  # rotation pairs per (t, h, w) axis
    q_out: torch.Tensor,  # [B, H, Lq, D] contiguous, written
    k_out: torch.Tensor,  # [B, H, R, D] contiguous, rows [0, NV*S) written
) -> None:
    """Slot and position values are not read back here (that would stall the GPU every layer): the caller
    builds them from Python lists and checks their ranges there (``histream_engine.attention.ring.RingView``)."""
    B, Lq, H, D = q.shape
    R = k_store.shape[1]
    gh, gw = grid
    S = gh * gw
    nq, nv = q_pos.numel(), slot_pos.numel()
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k_store.dtype != q.dtype:
        raise ValueError(f"rope_prepass takes fp16/bf16/fp32 q and k of one dtype; got {q.dtype}, {k_store.dtype}")
    if D % 2 or (D // 2) & (D // 2 - 1) or D < 16:
        raise ValueError(f"rope_prepass needs a head_dim that is twice a power of two, at least 16; got {D}")
    if k_store.dim() != 4 or k_store.shape[0] != B or k_store.shape[2:] != (H, D) or R % S:
        raise ValueError(f"ring storage {tuple(k_store.shape)} does not fit q {tuple(q.shape)} with {S} tokens per frame")
    if Lq != nq * S or nv * S > R or nq > nv:
        raise ValueError(f"{Lq} query tokens must be the {nq} query frames of {S} tokens; {nv} visible slots of {R // S}")
    if q_pos.dtype != torch.int32 or slot_pos.dtype != torch.int32:
        raise ValueError("q_pos and slot_pos must be int32")
    if cos.shape != sin.shape or cos.shape[1] != D // 2 or cos.dtype != torch.float32 or not (cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError(f"cos/sin tables must be contiguous float32 [NPOS, {D // 2}], got {tuple(cos.shape)} {cos.dtype}")
    if cos.shape[0] < max(gh, gw):
        raise ValueError(f"RoPE table has {cos.shape[0]} positions, fewer than the {gh}x{gw} token grid needs")
    if sum(axis_pairs) != D // 2:
        raise ValueError(f"axis_pairs {axis_pairs} must sum to head_dim / 2 = {D // 2}")
    if q.stride(-1) != 1 or k_store.stride(-1) != 1:
        raise ValueError("q and k_store need a contiguous last dim")
    for name, t, shape in (("q_out", q_out, (B, H, Lq, D)), ("k_out", k_out, (B, H, R, D))):
        if tuple(t.shape) != shape or t.dtype != q.dtype or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous {list(shape)} {q.dtype}, got {tuple(t.shape)} {t.dtype}")
    tensors = (q, k_store, q_pos, slot_pos, cos, sin, q_out, k_out)
    if len({t.device for t in tensors}) != 1:
        raise ValueError("rope_prepass inputs must be on one device")
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("rope_prepass needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    q_blocks = triton.cdiv(Lq, BLOCK_T)
    _rope_prepass_kernel[(q_blocks + triton.cdiv(nv * S, BLOCK_T), B * H)](
        q, k_store, q_out, k_out, q_pos, slot_pos, cos, sin,
        q.stride(0), q.stride(1), q.stride(2),
        k_store.stride(0), k_store.stride(1), k_store.stride(2),
        Lq, nv * S, R, S, gw, H, q_blocks,
        HALF=D // 2, PT=axis_pairs[0], PH=axis_pairs[1], BLOCK_T=BLOCK_T,
    )
