"""Attention cores behind the RoPE pre-pass: interchangeable kernels over the same rotated scratch.

Each core takes the pre-pass's outputs and the ring's V storage, all with the visible keys as the rows
``[0, Lk)`` in ring slot order, and returns ``[B, Lq, H, D]``:

    core(q_rot [B, H, Lq, D], k_rot [B, H, R, D], v_store [B, R, H, D], key_tokens) -> [B, Lq, H, D]

Q and K are de-interleaved alike (``rope.deinterleave``), which every core can ignore: q.k is unchanged.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def triton_core(q_rot: torch.Tensor, k_rot: torch.Tensor, v_store: torch.Tensor, key_tokens: int) -> torch.Tensor:
    """Ours: TMA tiles, one K=D dot per key block (``kernels/attention_core.py``)."""
    from ..kernels.attention_core import attention_core

    return attention_core(q_rot, k_rot, v_store, key_tokens)


def cudnn_core(q_rot: torch.Tensor, k_rot: torch.Tensor, v_store: torch.Tensor, key_tokens: int) -> torch.Tensor:
    """``scaled_dot_product_attention`` pinned to cuDNN on a GPU. Under the CPU interpreter (tests only) SDPA's
    CPU kernel stands in, which checks the plumbing, not cuDNN."""
    k = k_rot[:, :, :key_tokens]  # [B, H, Lk, D]
    v = v_store[:, :key_tokens].transpose(1, 2)  # [B, H, Lk, D]
    if q_rot.is_cuda:
        if q_rot.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"the cudnn attention core needs fp16 or bf16, got {q_rot.dtype}; load the model in bf16")
        from torch.nn.attention import SDPBackend, sdpa_kernel

        pin = sdpa_kernel(SDPBackend.CUDNN_ATTENTION)
    else:
        pin = nullcontext()
    with pin:
        out = F.scaled_dot_product_attention(q_rot, k, v, scale=1.0 / math.sqrt(q_rot.shape[-1]))  # [B, H, Lq, D]
    return out.transpose(1, 2)


def flash_core(q_rot: torch.Tensor, k_rot: torch.Tensor, v_store: torch.Tensor, key_tokens: int) -> torch.Tensor:
    """FlashAttention-3 (``flash_attn_interface``, Hopper) where installed, else FlashAttention-2 (``flash_attn``)."""
    if q_rot.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the flash_attn attention core needs fp16 or bf16, got {q_rot.dtype}; load the model in bf16")
    k = k_rot[:, :, :key_tokens].transpose(1, 2)  # [B, Lk, H, D]
    out = flash_attn_func()(q_rot.transpose(1, 2), k, v_store[:, :key_tokens])  # [B, Lq, H, D]
    return out[0] if isinstance(out, tuple) else out  # some FlashAttention-3 releases also return the log-sum-exp


def flash_attn_func():
    try:
        from flash_attn_interface import flash_attn_func as fa3
    except ImportError:
        from flash_attn import flash_attn_func as fa2

        return fa2
    return fa3
