"""The plain torch pieces of attention: what every backend composes for whole sequences, and the reference every
kernel is tested against for the cached path.

- ``self_attention``, ``cross_attention``: whole sequences through ``scaled_dot_product_attention``. Every backend
  uses these (they are not on the cached path).
- ``write_kv``: a chunk's K (RMSNorm, + RoPE where stored rotated) and V into one layer's ring, in the model dtype or
  in e4m3 (``fp8_ring``).
- ``visible_kv``, ``ring_attention``: the window's rotated K and its V, and the chunk's queries over them.
- ``downsample_patches``: area downsampling + patchify for the low-res re-cache.

The window is always the ring's first ``NV`` slots (``RingView.slot_positions``) and softmax does not care about key
order, so the cached path reads K and V as one slice of the storage: no gather, no copy. With ``absolute`` positions K
is cached rotated and only the chunk's queries (and its own keys, once, at write) are rotated; with ``window``
positions the slice is rotated by the frames' current positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fp8_ring import dequantized_kv, reference_write_kv_fp8
from .protocol import CacheLayer
from .ring import RingView
from .rope import apply_rope


def self_attention(
    q: torch.Tensor,  # [B, Lq, H, D] un-rotated (after RMSNorm)
    k: torch.Tensor,  # [B, Lk, H, D] un-rotated (after RMSNorm)
    v: torch.Tensor,  # [B, Lk, H, D]
    q_rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [Lq, D/2]
    k_rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [Lk, D/2]
    mask: torch.Tensor | None = None,  # [Lq, Lk] bool, True = may attend
) -> torch.Tensor:  # [B, Lq, H, D]
    return cross_attention(apply_rope(q, *q_rope), apply_rope(k, *k_rope), v, mask)


def cross_attention(
    q: torch.Tensor,  # [B, Lq, H, D]
    k: torch.Tensor,  # [B, Lk, H, D]
    v: torch.Tensor,  # [B, Lk, H, D]
    mask: torch.Tensor | None = None,  # [Lq, Lk] bool
) -> torch.Tensor:  # [B, Lq, H, D]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def write_kv(layer: CacheLayer, view: RingView, k_proj: torch.Tensor, v_proj: torch.Tensor, norm_k) -> None:
    """K RMSNorm (+ RoPE where ``view.rotated_keys``) and V into the chunk's rows of ``layer``: as they are in the
    model dtype, quantized per (frame slot, head) in e4m3. ``k_proj``, ``v_proj``: ``[B, M*S, H*D]``."""
    if layer.kv_dtype is not None:
        reference_write_kv_fp8(layer, view, k_proj, v_proj, norm_k)
        return
    H, D = layer.k.shape[2:]
    k = norm_k(k_proj).unflatten(-1, (H, D)).to(layer.k.dtype)  # [B, M*S, H, D]
    if view.rotated_keys:
        k = apply_rope(k, *view.q_rope)
    layer.k.index_copy_(1, view.write_rows, k)
    layer.v.index_copy_(1, view.write_rows, v_proj.unflatten(-1, (H, D)).to(layer.v.dtype))


def visible_kv(layer: CacheLayer, view: RingView, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's rotated K and its V ``[B, Lk, H, D]`` in ring slot order. In the model dtype K and V are slices of
    the storage where K is stored rotated; an e4m3 layer is dequantized into ``dtype``. K stored un-rotated is rotated
    by the frames' current positions."""
    if layer.kv_dtype is None:
        k, v = layer.k[:, : view.key_tokens], layer.v[:, : view.key_tokens]
    else:
        k, v = dequantized_kv(layer, view, dtype)
    return (k if view.rotated_keys else apply_rope(k, *view.slot_rope)), v


def ring_attention(q: torch.Tensor, layer: CacheLayer, view: RingView) -> torch.Tensor:
    """The chunk's queries ``[B, M*S, H, D]`` over its window, in ``q``'s dtype: an e4m3 window attended dequantized
    (the reference of the cache alone)."""
    k, v = visible_kv(layer, view, q.dtype)  # [B, Lk, H, D]
    return cross_attention(apply_rope(q, *view.q_rope), k, v)


def downsample_patches(x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """``x`` ``[B, C, F, H, W]`` -> area-downsampled patch vectors ``[B, F/pt, H/r/ph, W/r/pw, C*pt*ph*pw]``."""
    B, C, Fr, H, W = x.shape
    pt, ph, pw = patch_size
    low = F.avg_pool3d(x, (1, factor, factor))  # [B, C, F, H/r, W/r]
    low = low.reshape(B, C, Fr // pt, pt, H // factor // ph, ph, W // factor // pw, pw)
    return low.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, Fr // pt, H // factor // ph, W // factor // pw, -1)
