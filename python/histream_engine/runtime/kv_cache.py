"""Self-attention K/V caches. K is stored after RMSNorm and before RoPE; rotation happens when attending."""

from __future__ import annotations

import torch


class FullKVCache:
    """Self-Forcing's cache: K/V of every finished latent frame, preallocated for the whole video."""

    def __init__(self, num_layers: int, batch: int, frames: int, tokens_per_frame: int, heads: int, head_dim: int, dtype, device):
        self.tokens_per_frame = tokens_per_frame
        shape = (num_layers, batch, frames * tokens_per_frame, heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [layers, B, F*S, H, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # [layers, B, F*S, H, D]

    def write(self, layer: int, frame_start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a chunk's K/V ``[B, M*S, H, D]`` starting at latent frame ``frame_start``."""
        a = frame_start * self.tokens_per_frame
        self.k[layer, :, a : a + k.shape[1]] = k
        self.v[layer, :, a : a + v.shape[1]] = v

    def read(self, layer: int, frame_end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the K/V ``[B, frame_end*S, H, D]`` of latent frames ``[0, frame_end)``."""
        n = frame_end * self.tokens_per_frame
        return self.k[layer, :, :n], self.v[layer, :, :n]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
