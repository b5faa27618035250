"""The streaming engine: chunk-by-chunk causal generation with cached K/V and few-step flow sampling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..attention import get_backend
from ..attention.rope import grid_positions, inv_freqs, rope_cos_sin
from ..model.dit import WanDiT
from .kv_cache import FullKVCache
from .sampling import renoise, sigma_of, x0_from_flow
from .schedules import Schedule, resolve_schedule

# Wan VAE: 4x temporal, 8x spatial compression; the first latent frame decodes to one video frame.
VAE_TIME_STRIDE = 4
VAE_SPACE_STRIDE = 8


@dataclass
class EngineConfig:
    chunk_size: int = 3  # latent frames per chunk (M)
    attention: str = "torch"  # attention backend name, see histream_engine.attention_backends()

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


@dataclass
class ChunkResult:
    index: int
    latents: torch.Tensor  # [B, 16, M, h, w] float32, the chunk's final x0
    seconds: float  # wall time of the chunk (device-synchronised at its end)
    forwards: int  # DiT forwards run, recache included
    video_frames: int  # frames this chunk decodes to


@dataclass
class GenerationResult:
    latents: torch.Tensor  # [B, 16, F, h, w] float32
    chunks: list[ChunkResult] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.chunks)

    @property
    def video_frames(self) -> int:
        return sum(c.video_frames for c in self.chunks)

    @property
    def seconds_per_frame(self) -> float:
        """Denoising seconds per output video frame (the paper's latency measure)."""
        return self.seconds / self.video_frames


@dataclass(frozen=True)
class VideoShape:
    batch: int
    latent_frames: int
    latent_height: int
    latent_width: int
    num_chunks: int


class Engine:
    def __init__(self, dit: WanDiT, config: EngineConfig | None = None):
        self.dit = dit
        self.config = config or EngineConfig()
        self.attention = get_backend(self.config.attention)

    # ---- input checks ----
    def video_shape(self, prompt_embeds: torch.Tensor, num_frames: int, height: int, width: int) -> VideoShape:
        M = self.config.chunk_size
        if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % VAE_TIME_STRIDE:
            raise ValueError(f"num_frames must be a positive integer of the form 4k+1 (e.g. 81), got {num_frames!r}")
        latent_frames = (num_frames - 1) // VAE_TIME_STRIDE + 1
        if latent_frames % M:
            ok = [(VAE_TIME_STRIDE * M * n - VAE_TIME_STRIDE + 1) for n in range(1, 8)]
            raise ValueError(
                f"num_frames={num_frames} gives {latent_frames} latent frames, not a multiple of the chunk size {M}; "
                f"(frames - 1) / 4 + 1 must be divisible by {M}: use e.g. {ok}"
            )
        unit = VAE_SPACE_STRIDE * max(self.dit.config.patch_size[1:])
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v <= 0 or v % unit:
                raise ValueError(f"{name} must be a positive multiple of {unit} (VAE stride x patch size), got {v!r}")
        self.dit.check_context(prompt_embeds)
        return VideoShape(
            batch=prompt_embeds.shape[0],
            latent_frames=latent_frames,
            latent_height=height // VAE_SPACE_STRIDE,
            latent_width=width // VAE_SPACE_STRIDE,
            num_chunks=latent_frames // M,
        )

    # ---- one forward of a chunk against the cache ----
    def _chunk_forward(self, x, t: float, frame_start: int, cross_kv, cache: FullKVCache, rope_freqs, write: bool):
        """Run the DiT on a chunk ``x`` ``[B, 16, M, h, w]`` at timestep t; ``write`` stores its K/V (recache)."""
        dit = self.dit
        B, _, M, H, W = x.shape
        pt, ph, pw = dit.config.patch_size
        gh, gw = H // ph, W // pw
        frame_end = frame_start + M
        rope_dtype = torch.promote_types(dit.dtype, torch.float32)
        q_pos = grid_positions(range(frame_start, frame_end), gh, gw, device=x.device)  # [M*S, 3]
        k_pos = grid_positions(range(frame_end), gh, gw, device=x.device)  # [(start+M)*S, 3]
        q_rope = rope_cos_sin(q_pos, rope_freqs, rope_dtype)
        k_rope = rope_cos_sin(k_pos, rope_freqs, rope_dtype)
        backend = self.attention

        def attend(layer: int, q, k, v):
            if write:
                cache.write(layer, frame_start, k, v)
                keys, values = cache.read(layer, frame_end)
            else:
                ck, cv = cache.read(layer, frame_start)
                keys, values = torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
            return backend.self_attention(q, keys, values, q_rope, k_rope)

        t_frames = torch.full((B, M), float(t), device=x.device)  # [B, M]
        return dit.forward_tokens(x, t_frames, cross_kv, attend, backend, skip_head=write)

    # ---- public API ----
    def stream(
        self,
        prompt_embeds: torch.Tensor,  # [B, L, text_dim] or [L, text_dim]
        num_frames: int,
        height: int,
        width: int,
        schedule: "str | dict | Schedule" = "self_forcing",
        seed: int = 0,
    ) -> Iterator[ChunkResult]:
        """Generate chunk by chunk, yielding each chunk's latents as soon as it is denoised.

        Inputs are checked here, before the first chunk runs.
        """
        sched = resolve_schedule(schedule)
        if prompt_embeds.dim() == 2:
            prompt_embeds = prompt_embeds.unsqueeze(0)
        shape = self.video_shape(prompt_embeds, num_frames, height, width)
        return self._run(prompt_embeds, shape, sched, seed)

    @torch.no_grad()
    def _run(self, prompt_embeds, shape: VideoShape, sched: Schedule, seed: int) -> Iterator[ChunkResult]:
        dit = self.dit
        device = dit.device
        M = self.config.chunk_size
        cfg = dit.config
        gh, gw = shape.latent_height // cfg.patch_size[1], shape.latent_width // cfg.patch_size[2]
        cross_kv = dit.cross_kv(prompt_embeds.to(device))
        cache = FullKVCache(cfg.num_layers, shape.batch, shape.latent_frames, gh * gw, cfg.num_heads, cfg.head_dim, dit.dtype, device)
        rope_freqs = inv_freqs(cfg.head_dim, cfg.rope_theta)
        gen = torch.Generator(device=device).manual_seed(seed)
        chunk_shape = (shape.batch, cfg.in_dim, M, shape.latent_height, shape.latent_width)

        for c in range(shape.num_chunks):
            start = time.perf_counter()
            steps = sched.steps(c)
            x = torch.randn(chunk_shape, generator=gen, device=device)  # [B, 16, M, h, w] pure noise
            for i, step in enumerate(steps):
                sigma = sigma_of(step.timestep)
                flow = self._chunk_forward(x, step.timestep, c * M, cross_kv, cache, rope_freqs, write=False)
                x0 = x0_from_flow(x, flow.float(), sigma)
                if i + 1 < len(steps):
                    noise = torch.randn(chunk_shape, generator=gen, device=device)
                    x = renoise(x0, noise, sigma_of(steps[i + 1].timestep))
            self._chunk_forward(x0, 0.0, c * M, cross_kv, cache, rope_freqs, write=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            yield ChunkResult(
                index=c,
                latents=x0,
                seconds=time.perf_counter() - start,
                forwards=len(steps) + 1,
                video_frames=VAE_TIME_STRIDE * M - (VAE_TIME_STRIDE - 1 if c == 0 else 0),
            )

    def generate(self, prompt_embeds, num_frames: int, height: int, width: int, schedule="self_forcing", seed: int = 0) -> GenerationResult:
        """Run the whole video; returns all latents ``[B, 16, F, h, w]`` and per-chunk timings."""
        chunks = list(self.stream(prompt_embeds, num_frames, height, width, schedule=schedule, seed=seed))
        return GenerationResult(latents=torch.cat([c.latents for c in chunks], dim=2), chunks=chunks)
