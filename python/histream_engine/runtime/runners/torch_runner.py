"""The default DiT runner: the model's own forwards (``EngineConfig(dit="torch")``)."""

from __future__ import annotations


class TorchForwards:
    name = "torch"
    run_mode = None  # the engine's eager / graph-replay bookkeeping says how each chunk ran
    rotate_keys = True  # K cached rotated where its positions never change (RingKVCache)
    head_shards = 1  # every head in this process's caches (``ulysses.UlyssesForwards`` deals them out to ranks)

    def __init__(self, dit, backend, ops):
        self.dit, self.backend, self.ops = dit, backend, ops

    def check(self, sched, chunk_size: int, shape) -> None:
        """Every request the engine's own checks pass can run: the model is shape-agnostic."""

    def prepare_cross(self, cross_kv):
        return cross_kv

    def step(self, resolution, x, t, cross, attn):
        return self.dit.forward_latents(x, t, cross, attn, self.backend, ops=self.ops)

    def recache_latents(self, resolution, x0, t, cross, attn) -> None:
        self.dit.forward_tokens(self.dit.patchify(x0), t, cross, attn, self.backend, cache_only=True, ops=self.ops)

    def recache_patches(self, resolution, patches, t, cross, attn) -> None:
        self.dit.forward_tokens(self.dit.embed_patches(patches), t, cross, attn, self.backend, cache_only=True, ops=self.ops)

    def recache_tokens(self, tokens, t, cross_kv, attend) -> None:
        """A prompt switch's re-cache pass (``recache.recache_window``) over embedded tokens ``[B, F, h, w, C]``, under
        ``cross_kv`` as ``WanDiT.cross_kv`` gives it; ``attend`` writes the frames' K/V."""
        self.dit.forward_tokens(tokens, t, cross_kv, attend, self.backend, cache_only=True, ops=self.ops)


def torch_forwards(dit, backend, ops, engine_dir, parallel=None):
    """The model's forwards; sharded over ``parallel``'s ranks (``ulysses.UlyssesForwards``) when given."""
    if parallel is None:
        return TorchForwards(dit, backend, ops)
    from ..parallel.ulysses import UlyssesForwards

    return UlyssesForwards(dit, backend, ops, parallel)
