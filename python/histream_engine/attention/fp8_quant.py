"""E4M3 quantization of the ring cache and of the FP8 attention core's operands, in plain torch: the reference that the
Triton kernels (``kernels/recache_write_fp8.py``, ``kernels/attention_core_fp8.py``) are tested against.

Scales are ``amax / E4M3_MAX`` (448, e4m3's largest finite value), floored at ``SCALE_FLOOR``
(``kernels/fp8_constants.py``, the one definition the kernels share) so that an all-zero group never divides by zero: its
codes are zeros whatever the scale.

- Ring K and V: one scale per (batch, frame slot, head), over the frame's ``S`` tokens and the head's ``D`` dims.
- The core's Q: one scale per (batch, head, ``Q_BLOCK`` query rows), set by the pre-pass.
- The core's P: the online softmax's probabilities times 256 (a power of two folded into its exp2, cancelled by the
  row sum), cast to e4m3 with no scale; see ``fp8_core_reference``.
"""

from __future__ import annotations

import math

import torch

from ..kernels.fp8_constants import E4M3, E4M3_FINITE, E4M3_MAX, P_SHIFT, Q_BLOCK, SCALE_FLOOR


def group_scales(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``amax / 448`` over ``dims`` (kept), in float32, floored."""
    return (x.float().abs().amax(dim=dims, keepdim=True) / E4M3_MAX).clamp_min(SCALE_FLOOR)


def quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` rounded to e4m3 (saturating: a stale scale clips instead of overflowing to NaN)."""
    return (x.float() / scale).clamp(-E4M3_FINITE, E4M3_FINITE).to(E4M3)


def quantize_frames(x: torch.Tensor, tokens_per_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk K or V ``[B, M*S, H, D]`` -> e4m3 ``[B, M*S, H, D]`` and scales ``[B, M, H]`` float32, per frame and head."""
    B, L, H, D = x.shape
    frames = x.float().reshape(B, L // tokens_per_frame, tokens_per_frame, H, D)  # [B, M, S, H, D]
    scale = group_scales(frames, (2, 4))  # [B, M, 1, H, 1]
    return quantize(frames, scale).reshape(B, L, H, D), scale[:, :, 0, :, 0]


def dequantize_frames(x8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Ring rows ``[B, NV*S, H, D]`` e4m3 with scales ``[B, NV, H]`` -> ``[B, NV*S, H, D]`` in ``dtype``."""
    B, L, H, D = x8.shape
    nv = scale.shape[1]
    frames = x8.float().reshape(B, nv, L // nv, H, D) * scale[:, :, None, :, None]
    return frames.reshape(B, L, H, D).to(dtype)


def quantize_q_blocks(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated queries ``[B, H, Lq, D]`` -> e4m3 ``[B, H, Lq, D]`` and scales ``[B, H, ceil(Lq / Q_BLOCK)]``."""
    B, H, Lq, D = q.shape
    nb = -(-Lq // Q_BLOCK)
    padded = q.float().new_zeros(B, H, nb * Q_BLOCK, D)
    padded[:, :, :Lq] = q.float()
    blocks = padded.view(B, H, nb, Q_BLOCK, D)
    scale = group_scales(blocks, (3, 4))  # [B, H, nb, 1, 1]
    return quantize(blocks, scale).view(B, H, nb * Q_BLOCK, D)[:, :, :Lq], scale[..., 0, 0]


def slot_tiles(start: int, end: int, block_n: int) -> list[tuple[int, int]]:
    """The key rows ``[n0, n1)`` of each tile the FP8 core attends in one slot's rows ``[start, end)``: tiles begin
    16-aligned (TMA on keys-contiguous V), so an unaligned slot has a clipped head tile, then whole tiles, then a tail."""
    a0 = start - start % 16
    tiles, lo = [], a0
    if a0 < start:
        tiles.append((start, min(a0 + block_n, end)))
        lo = a0 + block_n
    hi = lo + max(end - lo, 0) // block_n * block_n
    tiles += [(n, n + block_n) for n in range(lo, hi, block_n)]
    if hi < end:
        tiles.append((hi, end))
    return tiles


def fp8_core_reference(
    q8: torch.Tensor,  # [B, H, Lq, D] e4m3 rotated queries
    q_scale: torch.Tensor,  # [B, H, ceil(Lq / Q_BLOCK)] float32
    k8: torch.Tensor,  # [B, H, Lk, D] e4m3 rotated keys, ring slot order
    k_scale: torch.Tensor,  # [B, NV, H] float32 per visible slot (times ROTATED_K_SCALE where re-quantized: k_mult)
    v8: torch.Tensor,  # [B, H, Lk, D] e4m3 values
    v_scale: torch.Tensor,  # [B, NV, H] float32
    block_n: int,
    k_mult: float = 1.0,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:  # [B, Lq, H, D]
    """The FP8 core's block algorithm in torch, tile by tile as ``kernels/attention_core_fp8.py`` runs it.

    Per frame slot f (scales constant inside it) and per key tile of ``block_n`` rows within it (``slot_tiles``): scores are the e4m3
    dot in fp32 times one row factor (Q's block scale x K's slot scale x softmax scale); the online softmax stays
    fp32; P is ``exp2(s - m + P_SHIFT)`` cast to e4m3 and multiplied with e4m3 V in fp32; the accumulator is kept in
    units of the current slot's V scale and rescaled once when the slot changes.
    """
    B, H, Lq, D = q8.shape
    Lk = k8.shape[2]
    nv = k_scale.shape[1]
    S = Lk // nv
    qk = math.log2(math.e) / math.sqrt(D)
    rows_q = q_scale.repeat_interleave(Q_BLOCK, dim=2)[:, :, :Lq, None]  # [B, H, Lq, 1]
    qf, kf, vf = q8.float(), k8.float(), v8.float()
    dev = q8.device  # the model runs wherever its inputs are (a GPU test compares it with the kernel there)
    m = torch.full((B, H, Lq, 1), float("-inf"), device=dev)
    l = torch.zeros((B, H, Lq, 1), device=dev)
    acc = torch.zeros((B, H, Lq, D), device=dev)
    vs_prev = None
    for f in range(nv):
        ks = k_scale[:, f, :, None, None]  # [B, H, 1, 1]
        vs = v_scale[:, f, :, None, None]
        if vs_prev is not None:
            acc = acc * (vs_prev / vs)
        vs_prev = vs
        row = rows_q * ks * (k_mult * qk)  # [B, H, Lq, 1]
        for n0, n1 in slot_tiles(f * S, (f + 1) * S, block_n):
            s = (qf @ kf[:, :, n0:n1].transpose(-1, -2)) * row  # [B, H, Lq, n] log2 units
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            p = torch.exp2(s - m_new + P_SHIFT)
            alpha = torch.exp2(m - m_new)
            l = l * alpha + p.sum(-1, keepdim=True)
            acc = acc * alpha + p.to(E4M3).float() @ vf[:, :, n0:n1]
            m = m_new
    out = acc * vs_prev / l  # [B, H, Lq, D]
    return out.transpose(1, 2).to(out_dtype)
