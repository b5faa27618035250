"""What the runtime needs of a video decoder: the one interface both the Wan VAE and TAEHV implement.

The engine, ``ChunkDecoder``, the host, serve and the bench hold a decoder only through these members, never
through a model's internals, so either decoder can be passed wherever a VAE goes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

# Both decoders keep the Wan VAE's compression: 4x in time (the first latent frame decodes to one video frame, each
# later one to 4), 8x in each spatial direction.
VAE_TIME_STRIDE = 4
VAE_SPACE_STRIDE = 8


@runtime_checkable
class VideoDecoder(Protocol):
    name: str  # "wan" or "taehv": shown by the CLI, the serve page and the bench

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def latent_channels(self) -> int: ...

    def new_state(self) -> Any:
        """A fresh streaming history for one video."""

    def decode(self, latents: torch.Tensor, state: Any = None) -> torch.Tensor:
        """DiT-space latents ``[B, C, F, h, w]`` -> video ``[B, 3, T, 8h, 8w]`` in [-1, 1], T = 4F (4F - 3 for a
        video's first latent frames). Consecutive pieces of one video share ``state``; without one, a whole video."""
