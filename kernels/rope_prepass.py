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

from .launch_checks import check_rope_prepass
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
    """Checks in ``launch_checks.check_rope_prepass``; slot and position ranges are the caller's (``RingView``)."""
    shape = check_rope_prepass(q, q_pos, cos, sin, grid, axis_pairs, q_out, k_store, slot_pos, k_out)
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("rope_prepass needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    B, Lq, H, D, S, R = shape.B, shape.Lq, shape.H, shape.D, shape.S, shape.R
    with_k = k_store is not None
    k_src = k_store if with_k else q  # never read when Lk == 0
    q_blocks = triton.cdiv(Lq, BLOCK_T)
    _rope_prepass_kernel[(q_blocks + triton.cdiv(shape.Lk, BLOCK_T), B * H)](
        q, k_src, q_out, k_out if with_k else q_out, q_pos, slot_pos if with_k else q_pos, cos, sin,
        q.stride(0), q.stride(1), q.stride(2),
        k_src.stride(0), k_src.stride(1), k_src.stride(2),
        Lq, shape.Lk, max(R, 1), S, grid[1], H, q_blocks,
        HALF=D // 2, PT=axis_pairs[0], PH=axis_pairs[1], BLOCK_T=BLOCK_T,
    )
