"""Attention cores behind the RoPE pre-pass: interchangeable kernels over the same inputs.

Each core takes ``[B, H, L, D]`` views, Q rotated by the pre-pass, K rotated (in the ring or in the
pre-pass's scratch) and V in the ring, keys in ring slot order, and returns ``[B, Lq, H, D]``:

    core(q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, D]) -> [B, Lq, H, D]
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..optional import is_installed, require


def triton_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Ours: 4D TMA tiles straight from the views, one K=D dot per key block (``kernels/attention_core.py``)."""
    from ..kernels.attention_core import attention_core

    return attention_core(q, k, v)


def cuda_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Ours compiled ahead of time: FA2-style mma.sync flash attention for sm_80+ (``csrc/attention_core.cu``)."""
    from ..native.ops import ATTENTION_DTYPES, attention_core

    if q.dtype not in ATTENTION_DTYPES:
        raise ValueError(f"the cuda attention core needs fp16 or bf16, got {q.dtype}; load the model in bf16")
    return attention_core(q, k, v)


def cudnn_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` pinned to cuDNN on a GPU. Under the CPU interpreter (tests only) SDPA's
    CPU kernel stands in, which checks the plumbing, not cuDNN."""
    if q.is_cuda:
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"the cudnn attention core needs fp16 or bf16, got {q.dtype}; load the model in bf16")
        from torch.nn.attention import SDPBackend, sdpa_kernel

        pin = sdpa_kernel(SDPBackend.CUDNN_ATTENTION)
    else:
        pin = nullcontext()
    with pin:
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]))  # [B, H, Lq, D]
    return out.transpose(1, 2)


def flash_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention-3 (``flash_attn_interface``, Hopper) where installed, else FlashAttention-2 (``flash_attn``)."""
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the flash_attn attention core needs fp16 or bf16, got {q.dtype}; load the model in bf16")
    out = flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, Lq, H, D]
    return out[0] if isinstance(out, tuple) else out  # some FlashAttention-3 releases also return the log-sum-exp


def flash_attn_func():
    """FlashAttention-3's function where flash_attn_interface is installed (an installed one that fails to import is
    that error, not a silent fall-back), else FlashAttention-2's."""
    if is_installed("flash_attn_interface"):
        return require("flash_attn_interface", None, "the flash_attn attention core", "flash_attn_func")
    return require("flash_attn", None, "the flash_attn attention core", "flash_attn_func")
