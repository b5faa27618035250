"""The RoPE pre-pass: rotate a chunk's queries, and where the cache keeps K un-rotated its visible keys, once per call.

Rotating K inside the attention's key loop repeats the rotation for every query block (192 times per key
at 1080p) and keeps the loop from using TMA. Where a frame's positions can never change (``absolute``
temporal positions, every preset's default) the recache write stores K already rotated
(``recache_write``) and this pass only rotates Q (75 MB read and written per call at 1080p). With
``window`` positions a cached frame's temporal position changes every chunk, so K stays un-rotated in the
ring and this pass also rotates the visible K into scratch in ring slot order (another 300 MB, about 1%
of the attention's time on an H100: an estimate from bandwidth).

Outputs keep Wan's interleaved pairs, so K rotated here and K rotated at write time are the same vectors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .rope_rotate import rope_rotate

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_T = 64  # rows per program: memory-bound, so tiles only need to be large enough to vectorise


@triton.jit
def _rotate_rows(
    X,  # [B, rows, H, D] un-rotated input (last dim contiguous)
    Out,  # [B, H, out_rows, D] rotated
    Pos,  # [rows / S] int32 temporal position of each frame of rows
    Cos,  # [NPOS, HALF] float32
    Sin,  # [NPOS, HALF] float32
    b, h, H, r0, rows, out_rows,
    stride_xb, stride_xl, stride_xh,
    S, GW,
    HALF: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, BLOCK_T: tl.constexpr,
):
    r = r0 + tl.arange(0, BLOCK_T)
    ok = r < rows
    dims = tl.arange(0, 2 * HALF)
    t = tl.load(Pos + r // S, mask=ok, other=0)
    src = X + b.to(tl.int64) * stride_xb + h * stride_xh + r[:, None].to(tl.int64) * stride_xl + dims[None, :]
    x = tl.load(src, mask=ok[:, None], other=0.0).to(tl.float32)  # [BLOCK_T, D]
    y = tl.reshape(rope_rotate(tl.reshape(x, (BLOCK_T, 1, 2 * HALF)), t, r % S, Cos, Sin, GW, HALF, PT, PH), (BLOCK_T, 2 * HALF))
    dst = Out + ((b * H + h).to(tl.int64) * out_rows + r[:, None].to(tl.int64)) * (2 * HALF) + dims[None, :]
    tl.store(dst, y.to(Out.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _rope_prepass_kernel(
    Q,  # [B, Lq, H, D] chunk queries after RMSNorm, un-rotated
    KStore,  # [B, R, H, D] one layer's ring K storage, un-rotated (unused when Lk == 0)
    QOut,  # [B, H, Lq, D] rotated
    KOut,  # [B, H, R, D] rotated, rows [0, Lk) written, in ring slot order
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
    q_pos: torch.Tensor,  # [Lq / S] int32 temporal positions of the query frames
    cos: torch.Tensor,  # [NPOS, D/2] float32, rows indexed by position
    sin: torch.Tensor,  # [NPOS, D/2] float32
    grid: tuple[int, int],  # (gh, gw) tokens per frame
    axis_pairs: tuple[int, int, int],  # rotation pairs per (t, h, w) axis
    q_out: torch.Tensor,  # [B, H, Lq, D] contiguous, written
    k_store: torch.Tensor | None = None,  # [B, R, H, D] one layer's ring K storage, un-rotated; None: rotate Q only
    slot_pos: torch.Tensor | None = None,  # [NV] int32 temporal position of the frame in each of the ring's first NV slots
    k_out: torch.Tensor | None = None,  # [B, H, R, D] contiguous, rows [0, NV*S) written
) -> None:
    """Slot and position values are not read back here (that would stall the GPU every layer): the caller
    builds them from Python lists and checks their ranges there (``histream_engine.attention.ring.RingView``)."""
    B, Lq, H, D = q.shape
    gh, gw = grid
    S = gh * gw
    nq = q_pos.numel()
    with_k = k_store is not None
    if with_k != (slot_pos is not None) or with_k != (k_out is not None):
        raise ValueError("rope_prepass rotates K only given all of k_store, slot_pos and k_out")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"rope_prepass takes fp16/bf16/fp32 q and k of one dtype; got {q.dtype}")
    if D % 2 or (D // 2) & (D // 2 - 1) or D < 16:
        raise ValueError(f"rope_prepass needs a head_dim that is twice a power of two, at least 16; got {D}")
    if Lq != nq * S:
        raise ValueError(f"{Lq} query tokens must be the {nq} query frames of {S} tokens")
    if q_pos.dtype != torch.int32:
        raise ValueError("q_pos and slot_pos must be int32")
    if cos.shape != sin.shape or cos.shape[1] != D // 2 or cos.dtype != torch.float32 or not (cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError(f"cos/sin tables must be contiguous float32 [NPOS, {D // 2}], got {tuple(cos.shape)} {cos.dtype}")
    if cos.shape[0] < max(gh, gw):
        raise ValueError(f"RoPE table has {cos.shape[0]} positions, fewer than the {gh}x{gw} token grid needs")
    if sum(axis_pairs) != D // 2:
        raise ValueError(f"axis_pairs {axis_pairs} must sum to head_dim / 2 = {D // 2}")
    if q.stride(-1) != 1:
        raise ValueError("q needs a contiguous last dim")
    outputs = [("q_out", q_out, (B, H, Lq, D))]
    nv, R = 0, 0
    if with_k:
        R, nv = k_store.shape[1], slot_pos.numel()
        if k_store.dtype != q.dtype or k_store.dim() != 4 or k_store.shape[0] != B or k_store.shape[2:] != (H, D) or R % S:
            raise ValueError(f"ring storage {tuple(k_store.shape)} {k_store.dtype} does not fit q {tuple(q.shape)} {q.dtype} with {S} tokens per frame")
        if nv * S > R or nq > nv:
            raise ValueError(f"{nv} visible slots of {S} tokens do not fit a ring of {R // S} slots with {nq} query frames")
        if slot_pos.dtype != torch.int32:
            raise ValueError("q_pos and slot_pos must be int32")
        if k_store.stride(-1) != 1:
            raise ValueError("k_store needs a contiguous last dim")
        outputs.append(("k_out", k_out, (B, H, R, D)))
    for name, t, shape in outputs:
        if tuple(t.shape) != shape or t.dtype != q.dtype or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous {list(shape)} {q.dtype}, got {tuple(t.shape)} {t.dtype}")
    tensors = [t for t in (q, q_pos, cos, sin, q_out, k_store, slot_pos, k_out) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError("rope_prepass inputs must be on one device")
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("rope_prepass needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    k_src = k_store if with_k else q  # never read when Lk == 0
    q_blocks = triton.cdiv(Lq, BLOCK_T)
    _rope_prepass_kernel[(q_blocks + triton.cdiv(nv * S, BLOCK_T), B * H)](
        q, k_src, q_out, k_out if with_k else q_out, q_pos, slot_pos if with_k else q_pos, cos, sin,
        q.stride(0), q.stride(1), q.stride(2),
        k_src.stride(0), k_src.stride(1), k_src.stride(2),
        Lq, nv * S, max(R, 1), S, gw, H, q_blocks,
        HALF=D // 2, PT=axis_pairs[0], PH=axis_pairs[1], BLOCK_T=BLOCK_T,
    )
