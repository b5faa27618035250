"""A stream's device-side state from its first chunk on, and the steps of one chunk over it.

``VideoStream`` (the iterator a caller holds) decides when a chunk runs, stops or switches prompts; a ``StreamRun``
does the work: it holds each resolution's ring cache, the clean latents a re-cache reads, the seeded noise generator,
the text K/V, the decoder's causal history and the chunk graphs, and turns a chunk index into a ``ChunkResult``.
"""

from __future__ import annotations

import time

import torch

from ..device_timing import DeviceTimer
from .cache.layer_attention import WindowAttention
from .cache.recache import LatentRing, recache_window
from .cache.resolution import build_resolution
from .decoding import ChunkDecoder
from .denoise.chunk_graphs import ChunkGraphs
from .denoise.finite_check import check_finite_latents
from .denoise.schedules import RESOLUTIONS
from .parts import StreamParts
from .results import ChunkResult, PromptSwitch, chunk_video_frames
from .video_request import VideoShape, position_horizon


class StreamRun:
    def __init__(self, parts: StreamParts, shape: VideoShape, sched, plan, prompt: torch.Tensor, seed: int):
        self.parts, self.shape, self.sched, self.plan = parts, shape, sched, plan
        dit, device = parts.dit, parts.device
        used = ("low", "high") if sched.uses_low else ("high",)
        self.res = {name: build_resolution(name, dit.config, dit.dtype, device, shape.batch, shape.latent_hw, sched, plan,
                                           parts.runner, parts.kv_dtype) for name in used}
        self.latents = LatentRing(plan, shape.batch, dit.config.out_dim, shape.latent_hw, device) \
            if plan.history_frames is not None else None
        self.rope_dtype = torch.promote_types(dit.dtype, torch.float32)
        # the kernels' RoPE table is sized once for the whole stream (a captured graph bakes its shape in)
        self.rope_positions = max(plan.max_temporal_position(position_horizon(plan, shape)) + 1,
                                  *(g for r in self.res.values() for g in r.grid))
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.timer = DeviceTimer(device)
        self.decoder = ChunkDecoder(parts.decoder, device) if parts.decoder is not None else None
        self.graphs = self._new_graphs()
        self.t_clean = torch.zeros((shape.batch, parts.chunk_size), device=device)  # [B, M] recache timesteps
        self.denoise = parts.denoiser
        self.prompt = prompt  # [B, L, text_dim] on the model's device
        self.raw_cross = dit.cross_kv(prompt.to(device))
        self.cross = parts.runner.prepare_cross(self.raw_cross)

    @property
    def caches(self) -> dict:
        return {name: r.cache for name, r in self.res.items()}

    @property
    def cache_bytes(self) -> int:
        return sum(r.cache.nbytes for r in self.res.values())

    def _new_graphs(self) -> ChunkGraphs:
        return ChunkGraphs(self.parts.graph_factory())

    def switch_prompt(self, embeds: torch.Tensor, recache: bool, chunk: int) -> PromptSwitch:
        """Land a prompt switch at the boundary before ``chunk``: the new text K/V, and with ``recache`` the frames
        ``chunk`` attends re-encoded under them."""
        t0 = time.perf_counter()
        dit, runner = self.parts.dit, self.parts.runner
        self.raw_cross = dit.cross_kv(embeds)
        self.cross = runner.prepare_cross(self.raw_cross)
        extra = {name: 0 for name in RESOLUTIONS}
        if recache:
            extra.update(recache_window(dit, runner, self.res, self.latents, chunk, self.raw_cross, self.sched.low_factor,
                                        self.rope_dtype))
        if self.parts.device.type == "cuda":
            torch.cuda.synchronize(self.parts.device)
        # Captured graphs bake in the old text K/V's addresses (and their shapes change with the prompt's length): the
        # chunks after a switch run eagerly, then are captured anew.
        self.graphs = self._new_graphs()
        self.prompt = embeds
        return PromptSwitch(recache, extra, time.perf_counter() - t0)

    def _noises(self, steps) -> list[torch.Tensor]:
        """One fresh Gaussian draw per step at its resolution, from the stream's seeded generator."""
        dit, M, B = self.parts.dit, self.parts.chunk_size, self.shape.batch
        return [torch.randn((B, dit.config.in_dim, M) + self.res[s.resolution].latent_hw, generator=self.generator,
                            device=self.parts.device) for s in steps]  # [B, 16, M, h, w] each

    def denoise_chunk(self, c: int):
        """Chunk ``c``'s forwards (eager, or through its CUDA graph): (x0 ``[B, 16, M, h, w]``, how it ran, views, steps)."""
        self.timer.start()
        steps = self.sched.steps(c)
        views = {name: r.view(c, self.rope_dtype, self.rope_positions) for name, r in self.res.items()}

        def body(steps, noises, views):
            attn = {name: WindowAttention(self.res[name].cache, view, self.parts.backend) for name, view in views.items()}
            return self.denoise(steps, noises, attn, self.sched, self.cross, self.t_clean)

        x0, mode = self.graphs.run(steps, self._noises(steps), views, body)
        return x0, mode, views, steps

    def finish_chunk(self, c: int, x0: torch.Tensor, mode: str, views: dict, steps, switch) -> ChunkResult:
        """After the forwards: the finite check, the clean latents kept for a re-cache, and the chunk's bookkeeping."""
        check_finite_latents(x0, c, steps)
        if self.latents is not None:
            self.latents.write(c, x0)
        passes = [s.resolution for s in steps] + list(self.res)
        return ChunkResult(
            index=c,
            latents=x0,
            seconds=self.timer.stop(),
            video_frames=chunk_video_frames(c, self.parts.chunk_size),
            forwards={name: sum(s.resolution == name for s in steps) for name in RESOLUTIONS},
            recache={name: int(name in self.res) for name in RESOLUTIONS},
            tokens_attended=sum(views[name].key_tokens for name in passes),
            cache_bytes=self.cache_bytes,
            latent_bytes=self.latents.nbytes if self.latents is not None else 0,
            run_mode=self.parts.runner.run_mode or mode,
            prompt_switch=switch,
        )

    def output(self, result: ChunkResult) -> list[ChunkResult]:
        """The results ready for the caller: this one at once without a decoder, else whichever decodes are done."""
        return [result] if self.decoder is None else self.decoder.submit(result)

    def flush(self) -> list[ChunkResult]:
        return [] if self.decoder is None else self.decoder.flush()
