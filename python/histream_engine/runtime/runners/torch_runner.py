"""The default DiT runner: the model's own forwards (``EngineConfig(dit="torch")``).

Every forward a chunk needs goes through ``_forward`` over embedded tokens, so the sequence-parallel runner
(``parallel.ulysses.UlyssesRunner``) is this runner with ``_forward`` sharded over ranks; the registry
(``registry``) builds one or the other.
"""

from __future__ import annotations

import torch


class TorchRunner:
    name = "torch"
    run_mode = None  # the engine's eager / graph-replay bookkeeping says how each chunk ran
    rotate_keys = True  # K cached rotated where its positions never change (RingKVCache)
    head_shards = 1  # every head in this process's caches

    def __init__(self, dit, backend, ops):
        self.dit, self.backend, self.ops = dit, backend, ops

    def check(self, sched, chunk_size: int, shape) -> None:
        """Every request the engine's own checks pass can run: the model is shape-agnostic."""

    def prepare_cross(self, cross_kv):
        return cross_kv

    def _forward(self, tokens: torch.Tensor, t: torch.Tensor, cross, attend, cache_only: bool) -> torch.Tensor | None:
        """Tokens ``[B, F, h, w, C]`` -> the flow ``[B, 16, F, H, W]`` (None for ``cache_only``)."""
        return self.dit.forward_tokens(tokens, t, cross, attend, self.backend, cache_only=cache_only, ops=self.ops)

    def step(self, resolution, x, t, cross, attn):
        self.dit.latent_grid(x)
        return self._forward(self.dit.patchify(x), t, cross, attn, cache_only=False)

    def recache_latents(self, resolution, x0, t, cross, attn) -> None:
        self._forward(self.dit.patchify(x0), t, cross, attn, cache_only=True)

    def recache_patches(self, resolution, patches, t, cross, attn) -> None:
        self._forward(self.dit.embed_patches(patches), t, cross, attn, cache_only=True)

    def recache_tokens(self, tokens, t, cross_kv, attend) -> None:
        self._forward(tokens, t, cross_kv, attend, cache_only=True)

