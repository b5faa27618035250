"""A stream's device-side state from its first chunk on, and the steps of one chunk over it.

``VideoStream`` (the iterator a caller holds) decides when a chunk runs, stops or switches prompts; a ``StreamRun``
does the work: it holds each resolution's ring cache, the clean latents a re-cache reads, the seeded noise generator,
the text K/V, the decoder's causal history and the chunk graphs, and turns a chunk index into a ``ChunkResult``.
It also takes and restores a ``StreamState`` at a chunk boundary (``snapshot``, ``restore``).
"""

from __future__ import annotations

import time

import torch

from ..device_timing import DeviceTimer
from .cache.layer_attention import WindowAttention
from .cache.recache import LatentRing, recache_window
from .cache.resolution import build_resolution
from .decoding import ChunkDecoder
from .denoise.chunk import CleanFrames
from .denoise.chunk_graphs import ChunkGraphs
from .denoise.finite_check import check_finite_latents
from .denoise.schedules import RESOLUTIONS
from .parts import StreamParts
from .results import ChunkResult, PromptSwitch, chunk_video_frames
from .stream_state import DecoderState, StreamState, StreamStateError
from ..model.decoder import VAE_SPACE_STRIDE
from .video_request import VideoShape, position_horizon


class StreamRun:
    def __init__(self, parts: StreamParts, shape: VideoShape, sched, plan, prompt: torch.Tensor, seed: int):
        self.parts, self.shape, self.sched, self.plan, self.seed = parts, shape, sched, plan, seed
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
        self.clean = None  # CleanFrames chunk 0 starts with (an image), set by ``condition``
        self.prompt = prompt  # [B, L, text_dim] on the model's device
        self.raw_cross = dit.cross_kv(prompt.to(device))
        self.cross = parts.runner.prepare_cross(self.raw_cross)

    @property
    def caches(self) -> dict:
        return {name: r.cache for name, r in self.res.items()}

    def release_caches(self) -> None:
        """Free the rings and graphs once the stream ended: what a later ``snapshot`` without rings needs stays."""
        self.res, self.graphs = None, None

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

        clean = self.clean if c == 0 else None  # a chunk that holds given frames never repeats a graph signature

        def body(steps, noises, views):
            attn = {name: WindowAttention(self.res[name].cache, view, self.parts.backend) for name, view in views.items()}
            return self.denoise(steps, noises, attn, self.sched, self.cross, self.t_clean, clean)

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

    # ---- stream states (``stream_state``) ----
    def context_frames(self, chunk: int) -> list[int]:
        """The frames chunk ``chunk`` attends besides its own: what a state at that boundary keeps."""
        visible = self.plan.visible_frames(chunk)
        return visible[: len(visible) - self.parts.chunk_size]

    def snapshot(self, chunk: int, include_cache: bool, model: dict) -> StreamState:
        """The state at the boundary before chunk ``chunk`` (no chunk running, no decode in flight)."""
        if self.latents is None and not include_cache:
            raise StreamStateError(f"schedule {self.sched.name!r} keeps the full history (window='full'): a state without "
                                   "the rings would have to re-encode the whole video; take state(include_cache=True)")
        if include_cache and self.res is None:
            raise StreamStateError("this stream's rings were freed when it ended or was closed: take "
                                   "state(include_cache=True) while it runs, or the state without them")
        if self.decoder is not None and self.decoder.pending:
            raise RuntimeError("a decode is in flight: VideoStream.state flushes it first")
        frames = self.context_frames(chunk)
        latents = self.latents.frames([self.plan.slot_of(f) for f in frames]) if self.latents is not None else \
            torch.zeros((self.shape.batch, self.parts.dit.config.out_dim, 0) + self.shape.latent_hw)
        decoder = None
        if self.decoder is not None:
            tensors, meta = self.parts.decoder.state_tensors(self.decoder.state)
            decoder = DecoderState(self.parts.decoder.name, {k: t.detach().clone() for k, t in tensors.items()}, meta)
        state = StreamState(
            next_chunk=chunk, chunk_size=self.parts.chunk_size, height=self.shape.latent_height * VAE_SPACE_STRIDE,
            width=self.shape.latent_width * VAE_SPACE_STRIDE, num_chunks=self.shape.num_chunks, schedule=self.sched,
            seed=self.seed, context_frames=frames, latents=latents.clone(), generator=self.generator.get_state().clone(),
            generator_device=self.parts.device.type, prompt_embeds=self.prompt.detach().clone(), model=model, decoder=decoder)
        if include_cache:
            state.rings = {name: [t.clone() for t in r.cache.storage] for name, r in self.res.items()}
            state.latent_ring = None if self.latents is None else self.latents.x0.clone()
        return state

    def restore(self, state: StreamState, prompt: torch.Tensor, recache: bool) -> PromptSwitch | None:
        """Put the stream where ``state`` left it, before its first chunk: the noise generator, the decoder's history and
        either the saved rings or the context frames' latents, re-encoded under ``prompt`` (a prompt switch with
        re-cache at that boundary). Returns that switch's report (None when the rings were loaded as they were)."""
        self.generator.set_state(state.generator.cpu())
        if self.decoder is not None and state.decoder is not None:
            self.decoder.state = self.parts.decoder.load_state(state.decoder.tensors, state.decoder.meta)
        if state.has_rings:
            for name, r in self.res.items():
                r.cache.load_storage([t.to(self.parts.device) for t in state.rings[name]])
            if self.latents is not None:
                self.latents.x0.copy_(state.latent_ring)
        else:
            slots = [self.plan.slot_of(f) for f in state.context_frames]
            self.latents.x0[:, :, slots] = state.latents.to(self.latents.x0)
        if not recache:
            return None
        return self.switch_prompt(prompt, True, state.next_chunk)

    def condition(self, image_latents: torch.Tensor) -> None:
        """Chunk 0 starts with ``image_latents`` ``[B, 16, k, h, w]`` (DiT space, high resolution) as clean frames; at the
        low resolution they are area-downsampled, as the low-res ring's frames are."""
        latents = {"high": image_latents.float()}
        if "low" in self.res:
            r = self.sched.low_factor
            latents["low"] = torch.nn.functional.avg_pool3d(latents["high"], (1, r, r))
        self.clean = CleanFrames(latents)

    def start_after(self, latents: torch.Tensor, chunks: int) -> PromptSwitch:
        """The stream's first ``chunks`` chunks are given (``latents`` ``[B, 16, chunks * M, h, w]``): the frames the next
        chunk attends are written into the rings at t=0 (a re-cache under the stream's prompt), and the decoder's
        causal history is what decoding the given frames leaves (their frames are not handed out again)."""
        M = self.parts.chunk_size
        for c in range(chunks):
            self.latents.write(c, latents[:, :, c * M:(c + 1) * M])
        if self.decoder is not None:
            self.parts.decoder.decode(latents.to(self.parts.decoder.dtype), self.decoder.state)
        return self.switch_prompt(self.prompt, True, chunks)
