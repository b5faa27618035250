"""Flash attention of pre-rotated queries over a ring cache's visible prefix: the core behind the RoPE pre-pass.

Everything irregular about the ring is settled before this kernel runs (``rope_prepass``): Q and K arrive
rotated and de-interleaved, K in ring slot order, and the visible frames are always the first ``Lk / S``
slots of the ring (``RingView.slot_positions`` checks it). Softmax attention does not depend on the order
of its keys, so K and V are read as they lie in slot order, V straight from the ring storage, with no
gather. Every load is a TMA tile of a 2D tensor descriptor and the score is one K=D dot, so the key loop
is the plain flash-attention loop that the Hopper compiler pipelines (wgmma + TMA, no spills; see
``kernels/aot.py``).

The key loop runs unmasked over whole blocks and once more, masked, over the partial last block: rows past
``Lk`` belong to slots that are not visible (or to the next head), so their scores are forced to -inf with
``tl.where``, which also discards anything non-finite that a stale row might hold.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner may pick on a GPU. Each one compiles for sm_90a
# with no spills and a hot loop issued in less time than its wgmmas take (kernels/aot.py, tests/kernels/test_aot.py).
CONFIGS = ((128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3))
INTERPRET_CONFIG = (32, 32, 4, 1)  # the interpreter pays per program; tests use sizes that leave partial blocks


def _set_block_shapes(nargs):
    """Host tensor descriptors carry their tile shape, so each autotune config sets its own before launch."""
    bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["D"]
    nargs["desc_q"].block_shape = [bm, d]
    nargs["desc_k"].block_shape = [bn, d]
    nargs["desc_v"].block_shape = [bn, d]


def _configs():
    chosen = (INTERPRET_CONFIG,) if INTERPRET else CONFIGS
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_set_block_shapes)
        for bm, bn, w, s in chosen
    ]


@triton.jit
def _attend_block(q, desc_k, desc_v, k_row, v_row, v_col, n0, Lk, m_i, l_i, acc, qk_scale,
                  MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the online softmax; ``MASK`` only for the partial last block."""
    k = desc_k.load([k_row + n0, 0])  # [BLOCK_N, D]
    s = tl.dot(q, k.T, input_precision=PRECISION)  # [BLOCK_M, BLOCK_N] float32
    if MASK:
        s = tl.where((n0 + tl.arange(0, BLOCK_N) < Lk)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = desc_v.load([v_row + n0, v_col])  # [BLOCK_N, D]
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc


@triton.autotune(configs=_configs(), key=["D", "PRECISION", "Lq", "Lk"])
@triton.jit
def _attention_core_kernel(
    desc_q,  # [B*H*Lq, D] rotated queries, rows of [B, H, Lq, D]
    desc_k,  # [B*H*R, D] rotated keys in ring slot order, rows of [B, H, R, D]
    desc_v,  # [B*R, H*D] one layer's ring V storage [B, R, H, D]
    Out,  # [B, Lq, H, D]
    stride_ob, stride_ol, stride_oh,
    Lq, Lk, R, H,  # query tokens, visible key tokens (a prefix of the ring), ring rows, heads
    qk_scale,  # softmax scale * log2(e)
    D: tl.constexpr,  # head dim
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" for fp32 inputs, "tf32" otherwise (ignored for fp16/bf16)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    m0 = pid_m * BLOCK_M
    q = desc_q.load([pid_bh * Lq + m0, 0])  # [BLOCK_M, D]; rows past Lq are never stored
    k_row = pid_bh * R
    v_row = b * R
    v_col = h * D

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    full = (Lk // BLOCK_N) * BLOCK_N
    for n0 in range(0, full, BLOCK_N):
        m_i, l_i, acc = _attend_block(q, desc_k, desc_v, k_row, v_row, v_col, n0, Lk, m_i, l_i, acc, qk_scale,
                                      MASK=False, PRECISION=PRECISION, BLOCK_N=BLOCK_N)
    if full < Lk:
        m_i, l_i, acc = _attend_block(q, desc_k, desc_v, k_row, v_row, v_col, full, Lk, m_i, l_i, acc, qk_scale,
                                      MASK=True, PRECISION=PRECISION, BLOCK_N=BLOCK_N)

    offs_m = m0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    out = acc / l_i[:, None]
    o_ptr = Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ol + dims[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=(offs_m < Lq)[:, None])


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (32, 64, 128)


def attention_core(
    q_rot: torch.Tensor,  # [B, H, Lq, D] rotated, de-interleaved queries (contiguous)
    k_rot: torch.Tensor,  # [B, H, R, D] rotated, de-interleaved keys in ring slot order (contiguous)
    v_store: torch.Tensor,  # [B, R, H, D] one layer's ring V storage (contiguous)
    key_tokens: int,  # Lk: the visible keys are rows [0, Lk) of k_rot and v_store
    out: torch.Tensor | None = None,  # [B, Lq, H, D]
) -> torch.Tensor:  # [B, Lq, H, D]
    B, H, Lq, D = q_rot.shape
    R = k_rot.shape[2]
    if q_rot.dtype not in SUPPORTED_DTYPES or k_rot.dtype != q_rot.dtype or v_store.dtype != q_rot.dtype:
        raise ValueError(f"attention_core takes fp16/bf16/fp32 q, k, v of one dtype; got {q_rot.dtype}, {k_rot.dtype}, {v_store.dtype}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"attention_core supports head_dim {SUPPORTED_HEAD_DIMS}, got {D}")
    if tuple(k_rot.shape) != (B, H, R, D) or tuple(v_store.shape) != (B, R, H, D):
        raise ValueError(f"k_rot {tuple(k_rot.shape)} must be [B, H, R, D] and v_store {tuple(v_store.shape)} [B, R, H, D] for q {tuple(q_rot.shape)}")
    if not 0 < key_tokens <= R:
        raise ValueError(f"key_tokens={key_tokens} must be in (0, {R}]: the visible keys are a prefix of the ring")
    if not (q_rot.is_contiguous() and k_rot.is_contiguous() and v_store.is_contiguous()):
        raise ValueError("attention_core needs contiguous q_rot, k_rot and v_store (TMA tiles)")
    if len({t.device for t in (q_rot, k_rot, v_store)}) != 1:
        raise ValueError("attention_core inputs must be on one device")
    if q_rot.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("attention_core needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    if out is None:
        out = torch.empty((B, Lq, H, D), dtype=q_rot.dtype, device=q_rot.device)
    elif tuple(out.shape) != (B, Lq, H, D) or out.dtype != q_rot.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be [{B}, {Lq}, {H}, {D}] {q_rot.dtype} with a contiguous last dim")

    # Block shapes are placeholders until the autotune pre-hook sets the chosen config's tiles.
    desc_q = TensorDescriptor(q_rot, [B * H * Lq, D], [D, 1], [16, D])
    desc_k = TensorDescriptor(k_rot, [B * H * R, D], [D, 1], [16, D])
    desc_v = TensorDescriptor(v_store, [B * R, H * D], [H * D, 1], [16, D])

    def grid(meta):
        return (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)

    _attention_core_kernel[grid](
        desc_q, desc_k, desc_v, out,
        out.stride(0), out.stride(1), out.stride(2),
        Lq, key_tokens, R, H,
        math.log2(math.e) / math.sqrt(D),
        D=D, PRECISION="ieee" if q_rot.dtype == torch.float32 else "tf32",
    )
    return out
