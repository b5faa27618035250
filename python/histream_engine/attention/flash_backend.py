"""The flash_attn backend: the reference gather + RoPE, then flash-attention's kernel (fp16/bf16, CUDA)."""

from __future__ import annotations

import torch

from .ring import RingView
from .rope import apply_rope
from .torch_ref import TorchAttention


class FlashAttention(TorchAttention):
    name = "flash_attn"

    def __init__(self):
        from flash_attn import flash_attn_func

        self._flash = flash_attn_func

    def ring_attention(self, q: torch.Tensor, k_store: torch.Tensor, v_store: torch.Tensor, view: RingView) -> torch.Tensor:
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"the flash_attn backend needs fp16 or bf16 weights, got {q.dtype}; load the model in bf16")
        k, v = self.gather(k_store, v_store, view)  # [B, Lk, H, D]
        return self._flash(apply_rope(q, *view.q_rope), apply_rope(k, *view.k_rope), v)
