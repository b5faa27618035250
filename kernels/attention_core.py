"""Flash attention of pre-rotated queries over a ring cache's visible prefix: the core behind the RoPE pre-pass.

Everything irregular about the ring is settled before this kernel runs: Q arrives rotated (``rope_prepass``),
K rotated in the ring or in the pre-pass's scratch, and the visible frames are always the first ``Lk / S``
slots of the ring (``RingView.slot_positions`` checks it). Softmax attention does not depend on the order of
its keys, so K and V are read as they lie in slot order, with no gather. Q, K and V reach the kernel as
``[B, H, L, D]`` views with any strides (ring storage is ``[B, R, H, D]``, scratch ``[B, H, R, D]``), each
loaded through a 4D TMA tensor descriptor bounded at its visible length, and the score is one K=D dot: the
plain flash-attention loop that the Hopper compiler pipelines (wgmma + TMA, no spills; see ``kernels/aot.py``).

The key loop runs unmasked over whole blocks and once more, masked, over the partial last block: TMA fills
rows past ``Lk`` with zeros, whose scores must still be excluded from the softmax.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .launch_checks import check_16_byte_aligned, check_attention_core

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner may pick on a GPU. Each compiles for sm_90a with no
# spills and a hot loop issued in less time than its wgmmas take (kernels/aot.py, tests/kernels/test_aot.py).
CONFIGS = ((128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3))
INTERPRET_CONFIG = (32, 32, 4, 1)  # the interpreter pays per program; tests use sizes that leave partial blocks


def _set_block_shapes(nargs):
    """Host tensor descriptors carry their tile shape, so each autotune config sets its own before launch."""
    bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["D"]
    nargs["desc_q"].block_shape = [1, 1, bm, d]
    nargs["desc_k"].block_shape = [1, 1, bn, d]
    nargs["desc_v"].block_shape = [1, 1, bn, d]


def _configs():
    chosen = (INTERPRET_CONFIG,) if INTERPRET else CONFIGS
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_set_block_shapes)
        for bm, bn, w, s in chosen
    ]


@triton.jit
def _attend_block(q, desc_k, desc_v, b, h, n0, Lk, m_i, l_i, acc, qk_scale,
                  MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One key block of the online softmax; ``MASK`` only for the partial last block."""
    k = desc_k.load([b, h, n0, 0]).reshape(BLOCK_N, D)
    s = tl.dot(q, k.T, input_precision=PRECISION)  # [BLOCK_M, BLOCK_N] float32
    if MASK:
        s = tl.where((n0 + tl.arange(0, BLOCK_N) < Lk)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = desc_v.load([b, h, n0, 0]).reshape(BLOCK_N, D)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc


@triton.autotune(configs=_configs(), key=["D", "PRECISION", "Lq"])
@triton.jit
def _attention_core_kernel(
    desc_q,  # [B, H, Lq, D] rotated queries
    desc_k,  # [B, H, Lk, D] rotated keys, ring slot order
    desc_v,  # [B, H, Lk, D] values, ring slot order
    Out,  # [B, Lq, H, D]
    stride_ob, stride_ol, stride_oh,
    Lq, Lk, H,  # query tokens, visible key tokens, heads
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
    q = desc_q.load([b, h, m0, 0]).reshape(BLOCK_M, D)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    full = (Lk // BLOCK_N) * BLOCK_N
    for n0 in range(0, full, BLOCK_N):
        m_i, l_i, acc = _attend_block(q, desc_k, desc_v, b, h, n0, Lk, m_i, l_i, acc, qk_scale,
                                      MASK=False, PRECISION=PRECISION, BLOCK_N=BLOCK_N, D=D)
    if full < Lk:
        m_i, l_i, acc = _attend_block(q, desc_k, desc_v, b, h, full, Lk, m_i, l_i, acc, qk_scale,
                                      MASK=True, PRECISION=PRECISION, BLOCK_N=BLOCK_N, D=D)

    offs_m = m0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    out = acc / l_i[:, None]
    o_ptr = Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ol + dims[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=(offs_m < Lq)[:, None])


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (32, 64, 128)


def _descriptor(t: torch.Tensor, name: str) -> TensorDescriptor:
    """A 4D TMA descriptor over a ``[B, H, L, D]`` view; TMA needs 16-byte aligned strides and base."""
    check_16_byte_aligned(name, t)
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, 16, t.shape[-1]])  # tile set per config


def attention_core(
    q: torch.Tensor,  # [B, H, Lq, D] rotated queries (a view; last dim contiguous)
    k: torch.Tensor,  # [B, H, Lk, D] rotated keys (a view of ring storage or scratch)
    v: torch.Tensor,  # [B, H, Lk, D] values (a view of ring storage)
    out: torch.Tensor | None = None,  # [B, Lq, H, D]
) -> torch.Tensor:  # [B, Lq, H, D]
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    check_attention_core(q, k, v, out, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS)
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("attention_core needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    descs = [_descriptor(t, name) for t, name in ((q, "q"), (k, "k"), (v, "v"))]
    if out is None:
        out = torch.empty((B, Lq, H, D), dtype=q.dtype, device=q.device)

    def grid(meta):
        return (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)

    _attention_core_kernel[grid](
        *descs, out,
        out.stride(0), out.stride(1), out.stride(2),
        Lq, Lk, H,
        math.log2(math.e) / math.sqrt(D),
        D=D, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out
