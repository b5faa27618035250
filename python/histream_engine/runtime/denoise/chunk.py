"""One chunk's device work: the schedule's steps, then the t=0 recache of every resolution's cache.

Per chunk the schedule lists (resolution, timestep) steps. Low-res steps attend the low-res cache; the low-res x0 is
upsampled and renoised for the high-res steps, which attend the high-res cache. After the last step, a t=0 recache
writes the final x0's K/V at high res and, when the schedule keeps a low-res cache, the area-downsampled x0's K/V at
low res, so both caches agree with the output.

Everything chunk-dependent arrives as tensors (the noises, the window views inside ``attn``), so the same function
runs eagerly or inside a CUDA graph (``chunk_graphs``): device work only, no host reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .resample import upsample_latents
from .sampling import renoise, sigma_of, x0_from_flow


@dataclass(frozen=True)
class ChunkDenoiser:
    runner: object  # the engine's DiT runner (``runners.protocol.DiTRunner``)
    backend: object  # the attention backend: its fused ``downsample_patches`` feeds the low-res recache
    patch_size: tuple[int, int, int]

    def __call__(self, steps, noises: list[torch.Tensor], attn: dict, sched, cross_kv, t_clean: torch.Tensor) -> torch.Tensor:
        """``noises``: one ``[B, 16, M, h, w]`` per step at its resolution; ``attn``: resolution -> ``WindowAttention``;
        ``t_clean`` ``[B, M]`` zeros. Returns the final x0 ``[B, 16, M, h, w]`` float32 at high resolution."""
        x0, prev = None, None
        for step, noise in zip(steps, noises):
            sigma = sigma_of(step.timestep)
            if x0 is None:
                x = noise
            else:
                base = x0 if step.resolution == prev else upsample_latents(x0, sched.low_factor, sched.upsample)
                x = renoise(base, noise, sigma)
            t_frames = torch.full_like(t_clean, step.timestep)  # [B, M]
            flow = self.runner.step(step.resolution, x, t_frames, cross_kv, attn[step.resolution])
            x0 = x0_from_flow(x, flow.float(), sigma)
            prev = step.resolution
        self.runner.recache_latents("high", x0, t_clean, cross_kv, attn["high"])
        if "low" in attn:
            patches = self.backend.downsample_patches(x0, sched.low_factor, self.patch_size)  # [B, M, h, w, P]
            self.runner.recache_patches("low", patches, t_clean, cross_kv, attn["low"])
        return x0
