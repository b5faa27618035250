"""The torch backend: plain torch ops (rotate, ``scaled_dot_product_attention``), the baseline every kernel is
tested against.

A backend provides:
- ``self_attention(q, k, v, q_rope, k_rope, mask)`` and ``cross_attention(q, k, v, mask)``: whole sequences;
- ``write_kv(k_store, v_store, view, k_proj, v_proj, norm_k)``: K RMSNorm (+ RoPE when ``view.rotated_keys``)
  and V, written in place into the chunk's ring rows;
- ``ring_attention(q, k_store, v_store, view)``: a chunk's queries over its ring window (``RingView``);
- ``downsample_patches(x, factor, patch_size)``: area downsampling + patchify for the low-res recache.

The window is always the ring's first ``NV`` slots (``RingView.slot_positions``) and softmax does not care
about key order, so the cached path reads K and V as one slice of the storage: no gather, no copy. With
``absolute`` positions K is cached rotated and only the chunk's queries (and its own keys, once, at write)
are rotated; with ``window`` positions the slice is rotated by the frames' current positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fp8_ring import dequantized_kv, reference_write_kv_fp8
from .ring import RingView
from .rope import apply_rope


class TorchAttention:
    name = "torch"
    fp8_ring = True  # reads an e4m3 ring by dequantizing its window (``fp8``): the reference of the FP8 cache
    fp8_core = False  # attends in the model dtype

    def self_attention(
        self,
        q: torch.Tensor,  # [B, Lq, H, D] un-rotated (after RMSNorm)
        k: torch.Tensor,  # [B, Lk, H, D] un-rotated (after RMSNorm)
        v: torch.Tensor,  # [B, Lk, H, D]
        q_rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [Lq, D/2]
        k_rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [Lk, D/2]
        mask: torch.Tensor | None = None,  # [Lq, Lk] bool, True = may attend
    ) -> torch.Tensor:  # [B, Lq, H, D]
        return self.cross_attention(apply_rope(q, *q_rope), apply_rope(k, *k_rope), v, mask)

    def cross_attention(
        self,
        q: torch.Tensor,  # [B, Lq, H, D]
        k: torch.Tensor,  # [B, Lk, H, D]
        v: torch.Tensor,  # [B, Lk, H, D]
        mask: torch.Tensor | None = None,  # [Lq, Lk] bool
    ) -> torch.Tensor:  # [B, Lq, H, D]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)

    def write_kv(
        self,
        k_store: torch.Tensor,  # [B, R, H, D] one layer's ring storage
        v_store: torch.Tensor,  # [B, R, H, D]
        view: RingView,  # the chunk's rows (``write_rows``) and, for rotated storage, positions (``q_rope``)
        k_proj: torch.Tensor,  # [B, M*S, H*D] K projection before RMSNorm
        v_proj: torch.Tensor,  # [B, M*S, H*D]
        norm_k,  # the model's K RMSNorm (or Identity)
    ) -> None:
        H, D = k_store.shape[2:]
        k = norm_k(k_proj).unflatten(-1, (H, D)).to(k_store.dtype)  # [B, M*S, H, D]
        if view.rotated_keys:
            k = apply_rope(k, *view.q_rope)
        k_store.index_copy_(1, view.write_rows, k)
        v_store.index_copy_(1, view.write_rows, v_proj.unflatten(-1, (H, D)).to(v_store.dtype))

    def visible_kv(self, k_store: torch.Tensor, v_store: torch.Tensor, view: RingView) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's rotated K and its V ``[B, Lk, H, D]`` in ring slot order: slices of the storage where K is
        stored rotated, K rotated by the frames' current positions otherwise."""
        k, v = k_store[:, : view.key_tokens], v_store[:, : view.key_tokens]
        return (k if view.rotated_keys else apply_rope(k, *view.slot_rope)), v

    def ring_attention(self, q: torch.Tensor, k_store: torch.Tensor, v_store: torch.Tensor, view: RingView) -> torch.Tensor:
        k, v = self.visible_kv(k_store, v_store, view)  # [B, Lk, H, D]
        return self.cross_attention(apply_rope(q, *view.q_rope), k, v)

    def write_kv_fp8(self, k_store, v_store, k_scale, v_scale, view: RingView, k_proj, v_proj, norm_k) -> None:
        reference_write_kv_fp8(k_store, v_store, k_scale, v_scale, view, k_proj, v_proj, norm_k)

    def ring_attention_fp8(self, q, k_store, v_store, k_scale, v_scale, view: RingView) -> torch.Tensor:
        k, v = dequantized_kv(k_store, v_store, k_scale, v_scale, view, q.dtype)  # [B, Lk, H, D]
        if not view.rotated_keys:
            k = apply_rope(k, *view.slot_rope)
        return self.cross_attention(apply_rope(q, *view.q_rope), k, v)

    def downsample_patches(self, x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
        """``x`` ``[B, C, F, H, W]`` -> area-downsampled patch vectors ``[B, F/pt, h, w, C*pt*ph*pw]``."""
        B, C, Fr, H, W = x.shape
        pt, ph, pw = patch_size
        low = F.avg_pool3d(x, (1, factor, factor))  # [B, C, F, H/r, W/r]
        low = low.reshape(B, C, Fr // pt, pt, H // factor // ph, ph, W // factor // pw, pw)
        return low.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, Fr // pt, H // factor // ph, W // factor // pw, -1)
