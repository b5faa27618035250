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
class CleanFrames:
    """Given frames at the start of a chunk (an image as latent frame 0 of chunk 0): in every forward they sit clean,
    at t=0, beside the chunk's noisy frames (per-frame timesteps), as CausVid conditions a causal model on an image;
    the chunk's x0 keeps them exactly."""

    latents: dict  # resolution -> [B, 16, k, h, w] float32, the given frames at that resolution

    @property
    def count(self) -> int:
        return next(iter(self.latents.values())).shape[2]

    def into(self, x: torch.Tensor, resolution: str) -> torch.Tensor:
        """``x`` ``[B, 16, M, h, w]`` with its first frames replaced by the given ones."""
        given = self.latents[resolution]
        return torch.cat([given.to(x.dtype), x[:, :, given.shape[2]:]], dim=2)


@dataclass(frozen=True)
class ChunkDenoiser:
    runner: object  # the engine's DiT runner (``runners.protocol.DiTRunner``)
    backend: object  # the attention backend: its fused ``downsample_patches`` feeds the low-res recache
    patch_size: tuple[int, int, int]

    def __call__(self, steps, noises: list[torch.Tensor], attn: dict, sched, cross_kv, t_clean: torch.Tensor,
                 clean: CleanFrames | None = None) -> torch.Tensor:
        """``noises``: one ``[B, 16, M, h, w]`` per step at its resolution; ``attn``: resolution -> ``WindowAttention``;
        ``t_clean`` ``[B, M]`` zeros; ``clean``: given frames this chunk starts with. Returns the final x0
        ``[B, 16, M, h, w]`` float32 at high resolution."""
        x0, prev = None, None
        for step, noise in zip(steps, noises):
            sigma = sigma_of(step.timestep)
            if x0 is None:
                x = noise
            else:
                base = x0 if step.resolution == prev else upsample_latents(x0, sched.low_factor, sched.upsample)
                x = renoise(base, noise, sigma)
            t_frames = torch.full_like(t_clean, step.timestep)  # [B, M]
            if clean is not None:
                x = clean.into(x, step.resolution)
                t_frames[:, : clean.count] = 0.0
            flow = self.runner.step(step.resolution, x, t_frames, cross_kv, attn[step.resolution])
            x0 = x0_from_flow(x, flow.float(), sigma)
            if clean is not None:
                x0 = clean.into(x0, step.resolution)
            prev = step.resolution
        self.runner.recache_latents("high", x0, t_clean, cross_kv, attn["high"])
        if "low" in attn:
            patches = self.backend.downsample_patches(x0, sched.low_factor, self.patch_size)  # [B, M, h, w, P]
            self.runner.recache_patches("low", patches, t_clean, cross_kv, attn["low"])
        return x0
