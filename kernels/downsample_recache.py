"""The low-res recache path in two passes, neither materialising an intermediate tensor.

- ``downsample_patchify``: final high-res latent chunk -> low-res patch vectors (area downsample by r and
  Wan's (1, 2, 2) patchify in one read of the latent), ready for the patch embedding's matmul.
- ``recache_write``: a layer's K projection -> K RMSNorm (-> RoPE, where the positions never change) -> the
  ring slot rows, and V -> its rows, in place.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .launch_checks import check_downsample_patchify, check_recache_write
from .rope_rotate import rope_rotate

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DOWNSAMPLE_BLOCK_T = 16  # tokens per program
# The interpreter pays per program, a GPU wants many small ones.
RECACHE_BLOCK_T = 16 if INTERPRET else 4


@triton.jit
def _downsample_patchify_kernel(
    X,  # [B, C, F, H, W] high-res latents
    Out,  # [N, P] with N = B * F/pt * h * w tokens, P = C * pt * ph * pw, row-major (c, dt, dy, dx)
    stride_xb, stride_xc, stride_xf, stride_xh, stride_xw,
    N, FT, GH, GW,  # tokens, token frames, token grid (low res)
    P: tl.constexpr,
    BLOCK_P: tl.constexpr,  # next power of two >= P
    PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    R: tl.constexpr,  # area downsampling factor
    BLOCK_T: tl.constexpr,
):
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    p = tl.arange(0, BLOCK_P)
    ok = (tok < N)[:, None] & (p < P)[None, :]
    gx = tok % GW
    gy = (tok // GW) % GH
    gf = (tok // (GW * GH)) % FT
    b = (tok // (GW * GH * FT)).to(tl.int64)
    c = p // (PT * PH * PW)
    dt = (p // (PH * PW)) % PT
    dy = (p // PW) % PH
    dx = p % PW
    frame = gf[:, None] * PT + dt[None, :]
    y0 = (gy[:, None] * PH + dy[None, :]) * R
    x0 = (gx[:, None] * PW + dx[None, :]) * R
    base = X + b[:, None] * stride_xb + c[None, :].to(tl.int64) * stride_xc + frame.to(tl.int64) * stride_xf
    acc = tl.zeros((BLOCK_T, BLOCK_P), tl.float32)
    for u in tl.static_range(R):
        for v in tl.static_range(R):
            acc += tl.load(base + (y0 + u) * stride_xh + (x0 + v) * stride_xw, mask=ok, other=0.0).to(tl.float32)
    tl.store(Out + tok[:, None].to(tl.int64) * P + p[None, :], (acc / (R * R)).to(Out.dtype.element_ty), mask=ok)


def downsample_patchify(x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """``x`` ``[B, C, F, H, W]`` -> low-res patch vectors ``[B, F/pt, H/(r*ph), W/(r*pw), C*pt*ph*pw]``."""
    FT, GH, GW, P = check_downsample_patchify(x, factor, patch_size)
    if x.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("downsample_patchify needs a CUDA tensor (or TRITON_INTERPRET=1 for the CPU interpreter)")
    B = x.shape[0]
    pt, ph, pw = patch_size
    out = torch.empty((B, FT, GH, GW, P), dtype=x.dtype, device=x.device)  # [B, F', h, w, P]
    N = B * FT * GH * GW
    _downsample_patchify_kernel[(triton.cdiv(N, DOWNSAMPLE_BLOCK_T),)](
        x, out, *x.stride(), N, FT, GH, GW,
        P=P, BLOCK_P=triton.next_power_of_2(P), PT=pt, PH=ph, PW=pw, R=factor, BLOCK_T=DOWNSAMPLE_BLOCK_T,
    )
    return out


@triton.jit
def _recache_write_kernel(
    KProj,  # [B, L, H*D] K projection before RMSNorm (rows contiguous)
    VProj,  # [B, L, H*D]
    Weight,  # [H*D] RMSNorm weight (unused when APPLY_NORM is False)
    Rows,  # [L] int64 destination row of each token in the ring storage
    KStore,  # [B, R, H, D] one layer's K storage (any row and head strides, last dim contiguous)
    VStore,  # [B, R, H, D]
    Pos,  # [L / S] int32 temporal position of each frame of the chunk (unused when ROTATE is False)
    Cos,  # [NPOS, D/2] float32 (unused when ROTATE is False)
    Sin,  # [NPOS, D/2] float32
    stride_kb, stride_kl, stride_vb, stride_vl,
    stride_sb, stride_sl, stride_sh, stride_tb, stride_tl, stride_th,
    L, S, GW, eps,
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_H: tl.constexpr,  # next power of two >= H
    APPLY_NORM: tl.constexpr,
    ROTATE: tl.constexpr,  # store K rotated by its RoPE positions (they never change: absolute temporal positions)
    PT: tl.constexpr, PH: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    heads = tl.arange(0, BLOCK_H)[:, None]
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
    if ROTATE:
        t = tl.load(Pos + tok // S, mask=t_ok, other=0)
        k = rope_rotate(k.to(tl.float32), t, tok % S, Cos, Sin, GW, D // 2, PT, PH)
    tl.store(KStore + b * stride_sb + row[:, None, None] * stride_sl + (heads * stride_sh + dims)[None, :, :], k.to(KStore.dtype.element_ty), mask=ok)
    v = tl.load(VProj + b * stride_vb + tok[:, None, None].to(tl.int64) * stride_vl + ch[None, :, :], mask=ok, other=0.0)
    tl.store(VStore + b * stride_tb + row[:, None, None] * stride_tl + (heads * stride_th + dims)[None, :, :], v.to(VStore.dtype.element_ty), mask=ok)


def recache_write(
    k_proj: torch.Tensor,  # [B, L, C] K projection before RMSNorm
    v_proj: torch.Tensor,  # [B, L, C]
    norm_weight: torch.Tensor | None,  # [C], None when the model has no qk norm
    eps: float,
    rows: torch.Tensor,  # [L] int64 destination rows
    k_store: torch.Tensor,  # [B, R, H, D] one layer's ring storage, H * D = C
    v_store: torch.Tensor,  # [B, R, H, D]
    rope: tuple | None = None,  # store K rotated: (positions [L/S] int32, cos [NPOS, D/2], sin, (gh, gw), (t, h, w) pairs)
) -> None:
    shape = check_recache_write(k_proj, v_proj, norm_weight, rows, k_store, v_store, rope)
    B, L, H, D, S, gw, pairs = shape.B, shape.L, shape.H, shape.D, shape.S, shape.gw, shape.pairs
    if k_proj.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("recache_write needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    pos, cos, sin = rope[:3] if rope is not None else (rows, k_proj, k_proj)  # never read without ROTATE
    _recache_write_kernel[(triton.cdiv(L, RECACHE_BLOCK_T), B)](
        k_proj, v_proj, norm_weight if norm_weight is not None else k_proj, rows, k_store, v_store, pos, cos, sin,
        k_proj.stride(0), k_proj.stride(1), v_proj.stride(0), v_proj.stride(1),
        k_store.stride(0), k_store.stride(1), k_store.stride(2), v_store.stride(0), v_store.stride(1), v_store.stride(2),
        L, S, gw, eps,
        H=H, D=D, BLOCK_H=triton.next_power_of_2(H), APPLY_NORM=norm_weight is not None, ROTATE=rope is not None,
        PT=pairs[0], PH=pairs[1], BLOCK_T=RECACHE_BLOCK_T,
    )
