"""One cached DiT forward as a fixed-shape ``nn.Module``: what ``onnx_export`` traces for a ``Signature``.

The blocks are the model's own (``WanDiT.forward_embedded``); only self-attention differs from the engine's
path, because a graph cannot hold the ring: it takes the window's other frames' K/V as inputs, concatenates the
chunk's own (after K's RMSNorm, un-rotated, which it also returns for the ring), rotates with real-valued RoPE
from cos/sin inputs, and runs SDPA. Keys are in window order (the chunk last), so the queries' cos/sin are the
last rows of the keys'.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.dit import WanDiT
from .signature import Signature


def rope_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` without complex numbers (ONNX and TensorRT have none): x ``[B, N, H, D]``, cos/sin ``[N, D/2]``."""
    work = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))  # [B, N, H, D/2, 2]
    even, odd = work[..., 0], work[..., 1]
    c, s = cos[None, :, None, :].to(work.dtype), sin[None, :, None, :].to(work.dtype)
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2).to(x.dtype)


class GraphForward(nn.Module):
    def __init__(self, dit: WanDiT, sig: Signature):
        super().__init__()
        self.dit = dit
        self.sig = sig

    def forward(self, patches, time_sinusoid, cross_k, cross_v, cross_bias, *rest):
        # patches [B, M, gh, gw, P]; time_sinusoid [B, M, freq_dim]; cross_k/v [L, B, T, H, D]; cross_bias [B, 1, 1, T];
        # rest: (window_k, window_v [L, B, ctx, H, D],) rope_cos, rope_sin [NV*S, D/2]
        dit, sig = self.dit, self.sig
        window = rest[:2] if len(rest) == 4 else None
        rope_cos, rope_sin = rest[-2:]
        heads, q_rows = dit.config.num_heads, sig.query_frames * sig.tokens_per_frame
        chunk_k, chunk_v = [], []

        def attend(layer, q, k_proj, v_proj, norm_k):
            k = norm_k(k_proj).unflatten(-1, (heads, -1))  # [B, M*S, H, D]
            v = v_proj.unflatten(-1, (heads, -1))
            chunk_k.append(k)
            chunk_v.append(v)
            if q is None:  # the last block of a recache: its K/V only
                return None
            if window is not None:
                k = torch.cat([window[0][layer], k], dim=1)  # [B, NV*S, H, D]
                v = torch.cat([window[1][layer], v], dim=1)
            q = rope_real(q, rope_cos[-q_rows:], rope_sin[-q_rows:]).transpose(1, 2)  # [B, H, M*S, D]
            k = rope_real(k, rope_cos, rope_sin).transpose(1, 2)
            return F.scaled_dot_product_attention(q, k, v.transpose(1, 2)).transpose(1, 2)  # [B, M*S, H, D]

        e, e0 = dit.time_mlp(time_sinusoid)
        cross_kv = [(cross_k[i], cross_v[i], cross_bias) for i in range(cross_k.shape[0])]
        flow = dit.forward_embedded(dit.embed_patches(patches), e, e0, cross_kv, attend, cache_only=not sig.head)
        kv = (torch.stack(chunk_k), torch.stack(chunk_v))  # each [L, B, M*S, H, D]
        return (flow, *kv) if sig.head else kv


def example_inputs(dit: WanDiT, sig: Signature, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the signature's shapes and dtypes, on the model's device (for tracing and for tests)."""
    g = torch.Generator().manual_seed(seed)
    shapes, _ = sig.shapes(dit.config)
    dtypes = {"time_sinusoid": dit.time_embedding[0].weight.dtype, "rope_cos": torch.float32, "rope_sin": torch.float32}
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        if name == "cross_bias":
            t = torch.zeros(shape)
        out[name] = t.to(dtypes.get(name, dit.dtype)).to(dit.device)
    return out
