"""What an engine hands each of its streams: the model and the machinery around it, never the engine itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .denoise.chunk import ChunkDenoiser

if TYPE_CHECKING:
    from ..model.decoder import VideoDecoder
    from ..model.dit import WanDiT
    from .parallel.group import ParallelGroup
    from .runners.protocol import DiTRunner


@dataclass(frozen=True)
class StreamParts:
    dit: "WanDiT"
    runner: "DiTRunner"  # who runs the forwards
    backend: object  # the attention backend the runner's forwards use
    decoder: "VideoDecoder | None"  # None where this process decodes nothing (no VAE, or a later rank of a group)
    chunk_size: int  # latent frames per chunk (M)
    kv_dtype: torch.dtype | None  # the ring caches' storage dtype; None: the model's
    graph_factory: Callable[[], Callable | None]  # a fresh maker of chunk graphs for a stream (None: run eagerly)
    parallel: "ParallelGroup | None"  # the sequence-parallel group every rank streams on together, or None

    @property
    def device(self) -> torch.device:
        return self.dit.device

    @property
    def denoiser(self) -> ChunkDenoiser:
        return ChunkDenoiser(self.runner, self.backend, self.dit.config.patch_size)
