"""The interface every DiT runner implements: who runs a chunk's forwards for the engine.

A runner is built once per engine (``registry.build_runner``) and called for every forward of every chunk. The
torch runner calls the model itself; the Ulysses runner (``parallel.ulysses``) runs the same forwards sharded over a
process group's ranks; the graph runners (``histream_engine.graphs.runners``) run exported ONNX or TensorRT graphs.
``attn`` is one resolution's ``cache.layer_attention.WindowAttention`` for the chunk: ``attn(layer, q, k_proj, v_proj,
norm_k)`` writes the chunk's K/V into the ring and attends the window.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class DiTRunner(Protocol):
    name: str  # the registry name it was built under
    run_mode: str | None  # what every chunk's ``ChunkResult.run_mode`` says (a graph engine's name), or None: the
    # engine's own bookkeeping (eager, or CUDA graph captured / replayed) says how each chunk ran
    rotate_keys: bool  # K is cached rotated where a frame's positions never change (``cache.kv_cache.RingKVCache``)
    head_shards: int  # ranks the heads, and so each ring cache, are dealt out to (1 on one process)

    def check(self, sched, chunk_size: int, shape) -> None:
        """Refuse, before the first chunk, a request (schedule, chunk size, ``video_request.VideoShape``) this runner
        cannot run."""

    def prepare_cross(self, cross_kv: list) -> Any:
        """The text K/V (``WanDiT.cross_kv``) in the form ``step`` and the recache calls take them."""

    def step(self, resolution: str, x: torch.Tensor, t: torch.Tensor, cross: Any, attn) -> torch.Tensor:
        """One denoising forward: latents ``[B, 16, M, h, w]`` at per-frame timesteps ``t`` ``[B, M]`` -> the flow
        ``[B, 16, M, h, w]``; the chunk's (noisy) K/V land in ``attn``'s ring."""

    def recache_latents(self, resolution: str, x0: torch.Tensor, t: torch.Tensor, cross: Any, attn) -> None:
        """A t=0 pass over clean latents ``[B, 16, M, h, w]``, run for the K/V it writes."""

    def recache_patches(self, resolution: str, patches: torch.Tensor, t: torch.Tensor, cross: Any, attn) -> None:
        """A t=0 pass over patch vectors ``[B, M, h, w, P]`` (the fused downsample's output), run for its K/V."""

    def recache_tokens(self, tokens: torch.Tensor, t: torch.Tensor, cross_kv: list, attend) -> None:
        """A prompt switch's re-cache pass over embedded tokens ``[B, F, h, w, C]``, under ``cross_kv`` as
        ``WanDiT.cross_kv`` gives it; ``attend`` writes the frames' K/V (``cache.recache``)."""
