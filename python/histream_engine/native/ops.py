"""Checked launchers of the CUDA kernels in ``histream_engine._C``, with the Triton launchers' signatures and contracts.

Every input is checked here first (shapes, dtypes, devices, contiguity, 16-byte alignment for the vector loads;
``kernels.launch_checks``, shared with the Triton launchers), then the kernel gets raw pointers, strides in
elements, a dtype code and torch's current stream. Slot and position ranges are the caller's to check from its
Python lists (``RingView``): reading them back here would stall the GPU every layer.
"""

from __future__ import annotations

import math

import torch

from ..kernels.launch_checks import (
    check_16_byte_aligned,
    check_attention_core,
    check_downsample_patchify,
    check_recache_write,
    check_rope_prepass,
)
from . import extension

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ATTENTION_DTYPES = (torch.float16, torch.bfloat16)  # mma.sync takes 16-bit inputs
ATTENTION_HEAD_DIMS = (32, 64, 128)


def _launch_args(kernel: str, *tensors: torch.Tensor | None) -> tuple[int, int, int]:
    """(dtype code, device index, stream handle) for tensors already checked to share a device."""
    first = tensors[0]
    for t in tensors:
        if t is not None and t.device.type != "cuda":
            raise RuntimeError(f"{kernel} (histream_engine._C) needs CUDA tensors, got one on {t.device}")
    return DTYPE_CODES[first.dtype], first.device.index, torch.cuda.current_stream(first.device).cuda_stream


def rope_prepass(
    q: torch.Tensor,  # [B, Lq, H, D] chunk queries, un-rotated (last dim contiguous)
    q_pos: torch.Tensor,  # [Lq / S] int32 temporal positions of the query frames
    cos: torch.Tensor,  # [NPOS, D/2] float32
    sin: torch.Tensor,  # [NPOS, D/2] float32
    grid: tuple[int, int],  # (gh, gw) tokens per frame
    axis_pairs: tuple[int, int, int],  # rotation pairs per (t, h, w) axis
    q_out: torch.Tensor,  # [B, H, Lq, D] contiguous, written
    k_store: torch.Tensor | None = None,  # [B, R, H, D] ring K, un-rotated; None: rotate Q only
    slot_pos: torch.Tensor | None = None,  # [NV] int32 temporal position of the frame in each of the first NV slots
    k_out: torch.Tensor | None = None,  # [B, H, R, D] contiguous, rows [0, NV*S) written
) -> None:
    s = check_rope_prepass(q, q_pos, cos, sin, grid, axis_pairs, q_out, k_store, slot_pos, k_out)
    if s.D % 16:
        raise ValueError(f"the CUDA rope_prepass needs a head_dim that is a multiple of 16; got {s.D}")
    dtype, device, stream = _launch_args("rope_prepass", q, q_pos, cos, sin, q_out, k_store, slot_pos, k_out)
    check_16_byte_aligned("q", q, dims=3)
    check_16_byte_aligned("q_out", q_out)
    if k_store is not None:
        check_16_byte_aligned("k_store", k_store, dims=3)
        check_16_byte_aligned("k_out", k_out)
    k_ptrs = (k_store.data_ptr(), *k_store.stride()[:3]) if k_store is not None else (0, 0, 0, 0)
    extension().rope_prepass(
        dtype, device, stream, q.data_ptr(), *q.stride()[:3], s.Lq, q_pos.data_ptr(), q_out.data_ptr(),
        *k_ptrs, s.Lk, s.R, slot_pos.data_ptr() if slot_pos is not None else 0, k_out.data_ptr() if k_out is not None else 0,
        cos.data_ptr(), sin.data_ptr(), s.B, s.H, s.D, s.S, grid[1], axis_pairs[0], axis_pairs[1])


def recache_write(
    k_proj: torch.Tensor,  # [B, L, C] K projection before RMSNorm
    v_proj: torch.Tensor,  # [B, L, C]
    norm_weight: torch.Tensor | None,  # [C] in k_proj's dtype, None when the model has no qk norm
    eps: float,
    rows: torch.Tensor,  # [L] int64 destination rows
    k_store: torch.Tensor,  # [B, R, H, D] one layer's ring storage, H * D = C
    v_store: torch.Tensor,  # [B, R, H, D]
    rope: tuple | None = None,  # store K rotated: (positions [L/S] int32, cos [NPOS, D/2], sin, (gh, gw), (t, h, w) pairs)
) -> None:
    s = check_recache_write(k_proj, v_proj, norm_weight, rows, k_store, v_store, rope)
    if k_proj.dtype not in DTYPE_CODES or {k_store.dtype, v_store.dtype, v_proj.dtype} != {k_proj.dtype}:
        raise ValueError(f"the CUDA recache_write takes fp16/bf16/fp32 projections and storage of one dtype; got "
                         f"{k_proj.dtype}, {v_proj.dtype} into {k_store.dtype}, {v_store.dtype}")
    if norm_weight is not None and norm_weight.dtype != k_proj.dtype:
        raise ValueError(f"the K RMSNorm weight is {norm_weight.dtype} but the projection is {k_proj.dtype}; cast the model")
    pos, cos, sin = rope[:3] if rope is not None else (None, None, None)
    dtype, device, stream = _launch_args("recache_write", k_proj, v_proj, norm_weight, rows, k_store, v_store, pos, cos, sin)
    for name, t in (("k_proj", k_proj), ("v_proj", v_proj), ("k_store", k_store), ("v_store", v_store)):
        check_16_byte_aligned(name, t)
    if norm_weight is not None:
        check_16_byte_aligned("norm weight", norm_weight)
    extension().recache_write(
        dtype, device, stream, k_proj.data_ptr(), k_proj.stride(0), k_proj.stride(1), v_proj.data_ptr(), v_proj.stride(0),
        v_proj.stride(1), norm_weight.data_ptr() if norm_weight is not None else 0, float(eps), rows.data_ptr(),
        k_store.data_ptr(), *k_store.stride()[:3], v_store.data_ptr(), *v_store.stride()[:3],
        *(t.data_ptr() if t is not None else 0 for t in (pos, cos, sin)),
        s.B, s.L, s.H, s.D, s.S, s.gw, s.pairs[0], s.pairs[1])


def downsample_patchify(x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """``x`` ``[B, C, F, H, W]`` -> low-res patch vectors ``[B, F/pt, H/(r*ph), W/(r*pw), C*pt*ph*pw]``."""
    ft, gh, gw, p = check_downsample_patchify(x, factor, patch_size)
    if x.dtype not in DTYPE_CODES:
        raise ValueError(f"the CUDA downsample_patchify takes fp16/bf16/fp32 latents, got {x.dtype}")
    dtype, device, stream = _launch_args("downsample_patchify", x)
    out = torch.empty((x.shape[0], ft, gh, gw, p), dtype=x.dtype, device=x.device)  # [B, F', h, w, P]
    extension().downsample_patchify(dtype, device, stream, x.data_ptr(), list(x.stride()), out.data_ptr(),
                                    x.shape[0], x.shape[1], ft, gh, gw, *patch_size, factor)
    return out


def attention_core(
    q: torch.Tensor,  # [B, H, Lq, D] rotated queries (a view; last dim contiguous)
    k: torch.Tensor,  # [B, H, Lk, D] rotated keys (a view of ring storage or scratch)
    v: torch.Tensor,  # [B, H, Lk, D] values (a view of ring storage)
    out: torch.Tensor | None = None,  # [B, Lq, H, D]
) -> torch.Tensor:  # [B, Lq, H, D]
    check_attention_core(q, k, v, out, ATTENTION_DTYPES, ATTENTION_HEAD_DIMS)
    dtype, device, stream = _launch_args("attention_core", q, k, v, out)
    B, H, Lq, D = q.shape
    if out is None:
        out = torch.empty((B, Lq, H, D), dtype=q.dtype, device=q.device)
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        check_16_byte_aligned(name, t)
    extension().attention_core(
        dtype, device, stream, q.data_ptr(), *q.stride()[:3], k.data_ptr(), *k.stride()[:3], v.data_ptr(), *v.stride()[:3],
        out.data_ptr(), *out.stride()[:3], B, H, Lq, k.shape[2], D, math.log2(math.e) / math.sqrt(D))
    return out
