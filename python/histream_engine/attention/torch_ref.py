"""The reference attention backend: rotate with plain torch ops, then ``scaled_dot_product_attention``.

Every faster backend is tested against this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rope import apply_rope


class TorchAttention:
    name = "torch"

    def self_attention(
        self,
        q: torch.Tensor,  # [B, Lq, H, D] un-rotated (after RMSNorm)
        k: torch.Tensor,  # [B, Lk, H, D] un-rotated (after RMSNorm)
        v: torch.Tensor,  # [B, Lk, H, D]
        q_rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [Lq, D/2]
        k_rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [Lk, D/2]
        mask: torch.Tensor | None = None,  # [Lq, Lk] bool, True = may attend
    ) -> torch.Tensor:  # [B, Lq, H, D]
        q = apply_rope(q, *q_rope)
        k = apply_rope(k, *k_rope)
        return self.cross_attention(q, k, v, mask)

    def cross_attention(
        self,
        q: torch.Tensor,  # [B, Lq, H, D]
        k: torch.Tensor,  # [B, Lk, H, D]
        v: torch.Tensor,  # [B, Lk, H, D]
        mask: torch.Tensor | None = None,  # [Lq, Lk] bool
    ) -> torch.Tensor:  # [B, Lq, H, D]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)
