"""The torch backend: plain torch ops (rotate, ``scaled_dot_product_attention``), the baseline every kernel is
tested against. It is ``reference``'s functions, nothing more, and reads both ring dtypes: an e4m3 ring is written with
per-(slot, head) scales and attended dequantized (``fp8_ring``), the reference of the FP8 cache alone.

The interface it implements is ``protocol.AttentionBackend``.
"""

from __future__ import annotations

from . import reference
from .protocol import RING_DTYPES, Capabilities


class TorchAttention:
    name = "torch"
    capabilities = Capabilities(ring_dtypes=RING_DTYPES, fp8_core=False)
    self_attention = staticmethod(reference.self_attention)
    cross_attention = staticmethod(reference.cross_attention)
    write_kv = staticmethod(reference.write_kv)
    ring_attention = staticmethod(reference.ring_attention)
    downsample_patches = staticmethod(reference.downsample_patches)
