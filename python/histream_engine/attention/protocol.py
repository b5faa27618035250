"""The interface every attention backend implements, what a backend declares it can do, and the one layer of ring cache
it is handed.

A backend is built once per engine (``attention.get_backend``) and called by the DiT for every attention of every
forward:

- ``self_attention`` and ``cross_attention``: whole sequences (the uncached reference forward, the re-cache pass, the
  text); every backend composes the plain SDPA functions of ``reference`` for them;
- ``write_kv`` and ``ring_attention``: a chunk's K/V into one layer's ring (``CacheLayer``), and its queries over the
  window (``ring.RingView``). One pair serves every ring dtype: a backend that reads several dispatches on the layer's;
- ``downsample_patches``: the low-res re-cache input.

What a backend reads and how it computes is a ``Capabilities`` record (as vLLM's backends state their supported
KV-cache dtypes): the engine refuses, before the first chunk, a ring dtype the backend cannot read
(``runtime.runners.precision.check_engine``), and the bench asks it which ring to hand a backend. Nothing asks a
backend with ``getattr`` or ``hasattr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..kernels.fp8_constants import E4M3
from .ring import RingView

# Ring dtypes: None stores K/V in the model's dtype; E4M3 stores e4m3 codes with one float32 scale per (frame slot, head).
RING_DTYPES = (None, E4M3)


def ring_dtype_name(kv_dtype: torch.dtype | None) -> str:
    return "the model dtype" if kv_dtype is None else str(kv_dtype).replace("torch.", "")


@dataclass(frozen=True)
class Capabilities:
    ring_dtypes: tuple[torch.dtype | None, ...]  # the ring dtypes (``RING_DTYPES``) it writes and attends
    fp8_core: bool = False  # QK^T and P.V run on e4m3 operands (its own numerics); else it attends in the model dtype

    def __post_init__(self):
        if not self.ring_dtypes or any(d not in RING_DTYPES for d in self.ring_dtypes):
            raise ValueError(f"ring_dtypes must be a non-empty selection of {RING_DTYPES}, got {self.ring_dtypes}")

    def reads(self, kv_dtype: torch.dtype | None) -> bool:
        return kv_dtype in self.ring_dtypes

    def describe_reads(self) -> str:
        return " or ".join(ring_dtype_name(d) for d in self.ring_dtypes)


@dataclass(frozen=True)
class CacheLayer:
    """One layer of a ring cache as a backend sees it (``runtime.cache.kv_cache.RingKVCache.layer``).

    K and V are ``[B, rows, H, D]`` views of the storage, head-major. In the model dtype the scales are None. In e4m3
    each has one float32 scale per (frame slot, head), ``[B, slots, H]``, and V is stored transposed (D strided, keys
    contiguous, see ``runtime.cache.kv_cache``)."""

    k: torch.Tensor  # [B, R, H, D]
    v: torch.Tensor  # [B, R, H, D]
    k_scale: torch.Tensor | None = None  # [B, slots, H] float32, e4m3 only
    v_scale: torch.Tensor | None = None  # [B, slots, H] float32, e4m3 only

    def __post_init__(self):
        scaled = (self.k_scale is not None, self.v_scale is not None)
        if scaled[0] != scaled[1]:
            raise ValueError("a ring layer has scales for both K and V (e4m3) or for neither (the model dtype)")
        if scaled[0] != (self.k.dtype == E4M3) or self.k.dtype != self.v.dtype:
            raise ValueError(f"a ring layer holds e4m3 K and V with scales, or model-dtype K and V without: got K "
                             f"{self.k.dtype}, V {self.v.dtype}, {'with' if scaled[0] else 'without'} scales")

    @property
    def kv_dtype(self) -> torch.dtype | None:
        """Its ring dtype, as ``Capabilities.ring_dtypes`` names it."""
        return None if self.k_scale is None else E4M3


@runtime_checkable
class AttentionBackend(Protocol):
    name: str  # the registry name it was built under
    capabilities: Capabilities

    def self_attention(
        self,
        q: torch.Tensor,  # [B, Lq, H, D] un-rotated (after RMSNorm)
        k: torch.Tensor,  # [B, Lk, H, D] un-rotated (after RMSNorm)
        v: torch.Tensor,  # [B, Lk, H, D]
        q_rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [Lq, D/2]
        k_rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [Lk, D/2]
        mask: torch.Tensor | None = None,  # [Lq, Lk] bool, True = may attend
    ) -> torch.Tensor:  # [B, Lq, H, D]
        """Whole-sequence attention, rotating Q and K."""

    def cross_attention(
        self,
        q: torch.Tensor,  # [B, Lq, H, D]
        k: torch.Tensor,  # [B, Lk, H, D]
        v: torch.Tensor,  # [B, Lk, H, D]
        mask: torch.Tensor | None = None,  # [Lq, Lk] bool
    ) -> torch.Tensor:  # [B, Lq, H, D]
        """Whole-sequence attention as given (no rotation)."""

    def write_kv(
        self,
        layer: CacheLayer,
        view: RingView,  # the chunk's rows (``write_rows``) and, for rotated storage, positions (``q_rope``)
        k_proj: torch.Tensor,  # [B, M*S, H*D] K projection before RMSNorm
        v_proj: torch.Tensor,  # [B, M*S, H*D]
        norm_k,  # the model's K RMSNorm (or Identity)
    ) -> None:
        """K RMSNorm (+ RoPE where ``view.rotated_keys``) and V, written in place into the chunk's ring rows (and, in
        e4m3, its slots' scales)."""

    def ring_attention(self, q: torch.Tensor, layer: CacheLayer, view: RingView) -> torch.Tensor:
        """The chunk's queries ``[B, M*S, H, D]`` (after RMSNorm, un-rotated) over its window -> ``[B, M*S, H, D]``."""

    def downsample_patches(self, x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> torch.Tensor:
        """``x`` ``[B, C, F, H, W]`` -> area-downsampled patch vectors ``[B, F/pt, h, w, C*pt*ph*pw]``."""


@runtime_checkable
class PrepassCore(Protocol):
    """A backend whose cached attention is a pre-pass, then a core: ``ring_attention(q, layer, view)`` is
    ``core(*prepass(q, layer, view))``. The pre-pass backends and ``triton_fp8`` are; ``bench/attention.py`` times the
    two apart where a backend is one."""

    def prepass(self, q: torch.Tensor, layer: CacheLayer, view: RingView) -> tuple:
        """The core's inputs: rotated (and, for an FP8 core, quantized) Q, K and V, ``[B, H, L, D]`` views."""

    def core(self, *inputs) -> torch.Tensor:
        """Attention over ``prepass``'s output -> ``[B, Lq, H, D]``."""


def check_readable(backend: AttentionBackend, layer: CacheLayer) -> None:
    """Refuse a layer whose ring dtype ``backend`` cannot read. The engine refuses that combination before the first
    chunk; this keeps a direct caller (a bench, a test) from a kernel reading the wrong bytes."""
    if not backend.capabilities.reads(layer.kv_dtype):
        raise ValueError(f"attention backend {backend.name!r} reads a ring in {backend.capabilities.describe_reads()}, "
                         f"not {ring_dtype_name(layer.kv_dtype)}")
