"""One resolution of a stream, as the chunk loop and the re-cache pass both use it: its latent size, token grid,
RoPE frequencies and ring cache. The schedule's ``low_factor`` decides the low resolution here, and only here."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...attention.rope import inv_freqs
from .kv_cache import RingKVCache
from .window import WindowPlan


def resolution_factor(name: str, sched) -> int:
    """How many times smaller per side than the high resolution ``name`` is, under ``sched``."""
    return sched.low_factor if name == "low" else 1


@dataclass
class Resolution:
    name: str  # "low" or "high"
    latent_hw: tuple[int, int]  # latent (h, w) at this resolution
    grid: tuple[int, int]  # (gh, gw) tokens per frame
    freqs: torch.Tensor  # [head_dim / 2] float64, NTK-scaled when the schedule asks
    cache: RingKVCache

    def view(self, chunk: int, rope_dtype, rope_positions: int):
        """Chunk ``chunk``'s window over this resolution's ring (``RingKVCache.view``)."""
        return self.cache.view(chunk, self.grid, self.freqs, rope_dtype, rope_positions)


def build_resolution(name: str, model_config, dtype: torch.dtype, device, batch: int, high_hw: tuple[int, int], sched,
                     plan: WindowPlan, runner, kv_dtype: torch.dtype | None) -> Resolution:
    """Allocate one resolution's ring for a stream of ``batch`` at latent size ``high_hw`` (the high resolution)."""
    cfg = model_config
    factor = resolution_factor(name, sched)
    h, w = high_hw[0] // factor, high_hw[1] // factor
    gh, gw = h // cfg.patch_size[1], w // cfg.patch_size[2]
    scale = (1.0, max(1.0, gh / cfg.train_grid[0]), max(1.0, gw / cfg.train_grid[1])) if sched.ntk else (1.0, 1.0, 1.0)
    heads = cfg.num_heads // runner.head_shards  # a sequence-parallel rank keeps only its own heads' ring
    cache = RingKVCache(plan, cfg.num_layers, batch, gh * gw, heads, cfg.head_dim, dtype, device,
                        rotate_keys=runner.rotate_keys, kv_dtype=kv_dtype)
    return Resolution(name, (h, w), (gh, gw), inv_freqs(cfg.head_dim, cfg.rope_theta, scale), cache)
