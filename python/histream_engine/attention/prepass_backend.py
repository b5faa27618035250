"""Backends built on the RoPE pre-pass: rotate what needs rotating once, then hand it to an attention core.

Per cached self-attention call:
- ``write_kv`` (``recache_write``: K RMSNorm fused, and RoPE fused where ``view.rotated_keys``) stores the
  chunk's K and V into their ring slots;
- the pre-pass (``rope_prepass``) rotates the chunk's Q into preallocated scratch, and, only where K is
  cached un-rotated (``window`` positions), the visible K into scratch too, in ring slot order;
- a core (``cores``: ours in Triton, cuDNN through SDPA, FlashAttention, or the fastest of them with
  ``auto``) attends ring rows ``[0, Lk)``, V (and rotated K) read in place as ``[B, H, Lk, D]`` views.

The low-res recache input comes from the fused downsample-patchify kernel. The three kernels around the core
come in two builds with one contract (``PrepassOps``): Triton (``kernels/``) and CUDA compiled ahead of time
(``histream_engine._C``, the ``cuda`` backend, which needs no Triton). Whole-sequence and text cross-attention
are ``reference``'s SDPA functions: they are not on the cached path. The cores take K and V in the model dtype, so these
backends read a model-dtype ring only (``fp8.TritonFp8Attention`` reads an e4m3 one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import reference
from .protocol import CacheLayer, Capabilities, check_readable
from .ring import RingView
from .rope import apply_rope, axis_dims

Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PrepassOps:
    """The kernels around a core, with the signatures of ``kernels.rope_prepass`` and ``kernels.downsample_recache``."""

    rope_prepass: Callable[..., None]
    recache_write: Callable[..., None]
    downsample_patchify: Callable[..., torch.Tensor]


def triton_ops() -> PrepassOps:
    from ..kernels.downsample_recache import downsample_patchify, recache_write
    from ..kernels.rope_prepass import rope_prepass

    return PrepassOps(rope_prepass, recache_write, downsample_patchify)


def cuda_ops() -> PrepassOps:
    from ..native import ops

    return PrepassOps(ops.rope_prepass, ops.recache_write, ops.downsample_patchify)


class Scratch:
    """Buffers allocated once per shape and reused by every layer and chunk: a CUDA graph captures their addresses, and
    an unbounded stream must not allocate per call."""

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def __call__(self, shape: tuple[int, ...], like: torch.Tensor, tag: str = "") -> torch.Tensor:
        key = (shape, like.dtype, like.device, tag)  # ``tag`` keeps two buffers of one shape apart
        if key not in self._buffers:
            # zeros: rows a pre-pass leaves unwritten are never garbage
            self._buffers[key] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return self._buffers[key]


def rope_args(view: RingView, head_dim: int):
    """The kernels' RoPE arguments: the cos/sin table ``[NPOS, D/2]`` each, the token grid, the rotation pairs per axis (t, h, w)."""
    cos, sin = view.rope_table
    return cos, sin, view.grid, tuple(d // 2 for d in axis_dims(head_dim))


def write_rope(view: RingView, head_dim: int):
    """What a fused write needs to rotate the chunk's K, or None where K is stored un-rotated."""
    return (view.query_position_index, *rope_args(view, head_dim)) if view.rotated_keys else None


class PrepassAttention:
    capabilities = Capabilities(ring_dtypes=(None,))  # its cores take K and V in the model dtype
    self_attention = staticmethod(reference.self_attention)
    cross_attention = staticmethod(reference.cross_attention)

    def __init__(self, name: str, core: Core, ops: PrepassOps):
        self.name = name
        self.core = core
        self.ops = ops
        self.scratch = Scratch()

    def write_kv(self, layer: CacheLayer, view: RingView, k_proj, v_proj, norm_k) -> None:
        check_readable(self, layer)
        self.ops.recache_write(k_proj.contiguous(), v_proj.contiguous(), getattr(norm_k, "weight", None), getattr(norm_k, "eps", 0.0),
                               view.write_rows, layer.k, layer.v, write_rope(view, layer.k.shape[-1]))

    def prepass(self, q: torch.Tensor, layer: CacheLayer, view: RingView):
        """The core's inputs ``[B, H, L, D]``: Q rotated (scratch), K rotated (ring or scratch), V (ring)."""
        B, Lq, H, D = q.shape
        R, Lk = layer.k.shape[1], view.key_tokens
        cos, sin, grid, pairs = rope_args(view, D)
        q_rot = self.scratch((B, H, Lq, D), q)  # [B, H, Lq, D]
        v = layer.v[:, :Lk].transpose(1, 2)  # [B, H, Lk, D]
        if view.rotated_keys:
            self.ops.rope_prepass(q, view.query_position_index, cos, sin, grid, pairs, q_rot)
            return q_rot, layer.k[:, :Lk].transpose(1, 2), v
        k_rot = self.scratch((B, H, R, D), q)  # [B, H, R, D], slot order
        self.ops.rope_prepass(q, view.query_position_index, cos, sin, grid, pairs, q_rot, layer.k, view.slot_position_index, k_rot)
        return q_rot, k_rot[:, :, :Lk], v

    def ring_attention(self, q: torch.Tensor, layer: CacheLayer, view: RingView) -> torch.Tensor:
        check_readable(self, layer)
        return self.core(*self.prepass(q, layer, view))

    def downsample_patches(self, x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
        return self.ops.downsample_patchify(x, factor, patch_size)


def reference_prepass(q: torch.Tensor, layer: CacheLayer, view: RingView):
    """What the pre-pass hands a core, in plain torch: Q, K, V as ``[B, H, L, D]``."""
    k, v = reference.visible_kv(layer, view, q.dtype)  # [B, Lk, H, D]
    return apply_rope(q, *view.q_rope).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
