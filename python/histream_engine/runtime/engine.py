"""The engine: a DiT (and optionally a VAE) with its settings, the front every entry point streams through.

``Engine.stream`` checks a request and returns a ``VideoStream`` (``stream``), which runs chunk after chunk over ring
KV caches driven by a schedule. What a chunk does lives in ``denoise/``, where its K/V live in ``cache/``, how the
ranks of a sequence-parallel group agree in ``parallel/``, and who runs the forwards in ``runners/``; the engine builds
the ``StreamParts`` a stream runs on and hands them over.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import torch

from ..attention import get_backend
from ..model.decoder import VAE_SPACE_STRIDE, VideoDecoder
from ..model.dit import WanDiT, engine_ops
from .engine_config import EngineConfig
from .memory_estimate import check_fits, estimate_stream
from .parallel.group import engine_fingerprint, model_fingerprint, resolve_group, tensor_fingerprint
from .parts import StreamParts
from .request_checks import check_model_dtype, check_prompt_embeds, check_seed, resolve_device
from .results import GenerationResult
from .runners import precision as precision_rules
from .runners.registry import build_runner
from .denoise.chunk_graphs import cuda_graph_factory
from .denoise.schedules import Schedule, resolve_schedule
from .context import encode_context
from .stream import VideoStream
from .stream_state import StreamState, StreamStateError
from .video_request import VideoShape, check_positions, check_unbounded, position_horizon, video_shape


class Engine:
    def __init__(self, dit: WanDiT, config: EngineConfig | None = None, vae: VideoDecoder | None = None):
        self.config = config or EngineConfig()
        # a sequence-parallel engine is set up on every rank at once: the ranks compare their models and settings
        # and either all of them build it or all refuse, with the same message (no rank waits on a refused one)
        self.parallel = resolve_group(self.config.group) if self.config.parallel else None
        if self.parallel is None:
            self._setup(dit, vae)
        else:
            self.parallel.agreed("engine setups", engine_fingerprint(dit, self.config, vae), lambda: self._setup(dit, vae))

    def _setup(self, dit: WanDiT, vae: VideoDecoder | None) -> None:
        check_model_dtype(dit.dtype)
        self.dit = dit
        self.attention = get_backend(self.config.attention)
        self.vae = vae
        self.text_encoder = None  # set by from_pretrained
        if vae is not None and vae.latent_channels != dit.config.out_dim:
            raise ValueError(f"the VAE decodes {vae.latent_channels}-channel latents but the DiT makes {dit.config.out_dim}")
        if vae is not None and vae.device != dit.device:
            raise ValueError(f"the VAE is on {vae.device} but the DiT on {dit.device}; move them to one device")
        if self.config.cuda_graphs and dit.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, but it is on {dit.device}; set cuda_graphs=False")
        if self.parallel is not None and dit.device != self.parallel.device:
            raise ValueError(f"this rank's process group runs on {self.parallel.device} but the model is on {dit.device}: "
                             f"load it with device={str(self.parallel.device)!r} (init_parallel() returns it as .device)")
        precision_rules.check_engine(self.config, self.attention, dit)
        precision_rules.apply_linears(self.config, dit)
        self.runner = build_runner(self.config.dit, dit, self.attention, engine_ops(self.config.compile),
                                   self.config.engine_dir, self.parallel)

    @property
    def parts(self) -> StreamParts:
        """What a new stream runs on, as the engine holds it now (a host may swap ``engine.vae`` between streams)."""
        return StreamParts(self.dit, self.runner, self.attention, self.vae if self.decodes else None, self.config.chunk_size,
                           precision_rules.kv_torch_dtype(self.config), self.graph_factory, self.parallel)

    @property
    def decodes(self) -> bool:
        """Whether this process decodes frames: always, but for the ranks after the first of a parallel group (every
        rank holds the same latents; one decode is enough)."""
        return self.vae is not None and (self.parallel is None or self.parallel.is_first)

    def graph_factory(self):
        """What makes a stream's chunk graphs (``denoise.chunk_graphs``), or None to run every chunk eagerly."""
        return cuda_graph_factory() if self.config.cuda_graphs else None

    @classmethod
    def from_pretrained(cls, model_dir, checkpoint=None, dtype: torch.dtype = torch.bfloat16, device=None,
                        config: EngineConfig | None = None, text_encoder: bool = True, vae: str = "wan",
                        tae_path=None) -> "Engine":
        """DiT, VAE and (when ``text_encoder``) UMT5 + tokenizer from a Wan2.1 folder; ``checkpoint`` (for example
        a Self-Forcing .pt) replaces the folder's DiT weights. The encoder is kept on ``engine.text_encoder``.
        ``vae="tae"`` decodes with TAEHV from ``tae_path`` (taew2_1.pth or .safetensors) instead of the folder's VAE."""
        from ..model_dir import load_folder_parts

        if vae not in ("wan", "tae") or (vae == "tae") != (tae_path is not None):
            raise ValueError(f"vae must be 'wan', or 'tae' with tae_path (taew2_1.pth); got vae={vae!r}, tae_path={tae_path!r}")
        device = resolve_device(device)

        def load():
            return load_folder_parts(model_dir, checkpoint, dtype, device, text_encoder, tae_path if vae == "tae" else None)

        if config is not None and config.parallel:  # every rank loads; a file one rank cannot read fails all of them
            asked = {"model_dir": str(model_dir), "checkpoint": str(checkpoint), "dtype": str(dtype), "vae": vae,
                     "tae_path": str(tae_path), "text_encoder": text_encoder}
            dit, decoder, encoder = resolve_group(config.group).agreed("model loads", asked, load)
        else:
            dit, decoder, encoder = load()
        engine = cls(dit, config, vae=decoder)
        engine.text_encoder = encoder
        return engine

    # ---- input checks ----
    def video_shape(self, prompt_embeds: torch.Tensor, num_frames, height: int, width: int, sched: Schedule) -> VideoShape:
        return video_shape(prompt_embeds.shape[0], num_frames, height, width, self.config.chunk_size, sched,
                           self.dit.config.patch_size)

    def memory_estimate(self, shape: VideoShape, sched: Schedule, plan):
        # the Wan VAE's decode dominates a step's memory; TAEHV's (a few narrow 2D convs) is small next to the DiT's
        vae_dim = getattr(getattr(self.vae, "config", None), "dim", None)
        return estimate_stream(self.dit.config, self.dit.dtype, self.dit.device, shape.batch, self.config.chunk_size,
                               shape.latent_hw, sched.low_factor if sched.uses_low else None, plan.slots,
                               vae_dim if self.decodes else None, self.runner.head_shards)

    @cached_property
    def model_info(self) -> dict:
        """What a stream state records of the model it ran on, so that it resumes only on the same one."""
        return {"config": repr(self.dit.config), "dtype": str(self.dit.dtype).replace("torch.", ""),
                "weights": model_fingerprint(self.dit)}

    def _checked_shape(self, shape: VideoShape, sched: Schedule, what: str):
        """The window plan of ``shape`` under ``sched``, once its positions, memory and runner checks pass."""
        plan = sched.window_plan(self.config.chunk_size, shape.latent_frames)
        check_positions(self.dit.config, plan, shape)
        check_fits(self.memory_estimate(shape, sched, plan), self.dit.device, what)
        horizon = shape if shape.latent_frames is not None else dataclasses.replace(
            shape, latent_frames=position_horizon(plan, shape) * self.config.chunk_size)  # every window size it meets
        self.runner.check(sched, self.config.chunk_size, horizon)
        return plan

    def _checked_stream(self, prompt_embeds, num_frames, height, width, schedule, seed, context=None) -> VideoStream:
        """Every check a request goes through, in order, then its stream (not started)."""
        sched = resolve_schedule(schedule)
        embeds = check_prompt_embeds(prompt_embeds, self.dit.config.text_dim)
        check_seed(seed)
        shape = self.video_shape(embeds, num_frames, height, width, sched)
        given = None
        if context is not None:
            given = encode_context(self.vae, context, shape.batch, height, width, self.config.chunk_size)
            self._check_context_fits(given, shape, sched, num_frames)
        plan = self._checked_shape(shape, sched, f"{'a live stream' if num_frames is None else f'{num_frames} frames'} at {width}x{height}")
        if given is None:
            return VideoStream(self.parts, embeds, shape, sched, plan, seed, model=self.model_info)
        if given.image:
            return VideoStream(self.parts, embeds, shape, sched, plan, seed, model=self.model_info,
                               start=lambda run: run.condition(given.latents.to(self.dit.device)))
        return VideoStream(self.parts, embeds, shape, sched, plan, seed, first_chunk=given.chunks, model=self.model_info,
                           start=lambda run: run.start_after(given.latents.to(self.dit.device), given.chunks))

    @staticmethod
    def _check_context_fits(given, shape: VideoShape, sched: Schedule, num_frames) -> None:
        if given.image:
            return
        if sched.window != "anchor":
            raise StreamStateError(f"a clip as context needs a sliding-window schedule: {sched.name!r} keeps the full "
                                   "history, which the clip's frames would have to fill; use histream, histream_plus, "
                                   "no_drc or two_step")
        if shape.num_chunks is not None and shape.num_chunks <= given.chunks:
            raise StreamStateError(f"num_frames={num_frames} counts the clip's frames too, and the clip fills "
                                   f"{given.chunks} chunks of the {shape.num_chunks} asked for: ask for more frames")

    # ---- public API ----
    def stream(
        self,
        prompt_embeds: torch.Tensor,  # [B, L, text_dim] or [L, text_dim]
        num_frames: int | None,
        height: int,
        width: int,
        schedule: "str | dict | Schedule" = "self_forcing",
        seed: int = 0,
        context: torch.Tensor | None = None,  # [3, H, W] image or [3, T, H, W] clip, pixels in [-1, 1]
    ) -> VideoStream:
        """Generate chunk by chunk, yielding each chunk as soon as it is ready; ``num_frames=None`` streams until
        ``close()`` (sliding-window schedules with ``positions='window'`` only). The returned ``VideoStream`` is an
        iterator with ``close()`` and ``set_prompt(embeds, recache=True)`` (``runtime.stream``).

        Without a VAE that is when it is denoised. With one, results carry decoded frames; on a GPU the
        decode of chunk k overlaps the denoising of chunk k+1, so chunk k arrives after chunk k+1 denoised.
        Inputs are checked here, before the first chunk runs. On a sequence-parallel engine every rank makes this
        call; they compare their arguments and checks first (``ParallelGroup.agreed``), every rank yields the same
        latents, and the first rank alone decodes frames.

        ``context`` (``runtime.context``): an image is latent frame 0 of chunk 0, clean beside its noisy frames; a clip
        of whole chunks (4M - 3, 8M - 3, ... frames) is the video's beginning, and the stream yields the chunks after
        it (``num_frames`` counts the clip's frames too). Encoded with the VAE's encoder.
        """
        def checked():
            return self._checked_stream(prompt_embeds, num_frames, height, width, schedule, seed, context)

        if self.parallel is None:
            return checked()
        request = {"prompt_embeds": tensor_fingerprint(prompt_embeds), "num_frames": num_frames, "height": height,
                   "width": width, "schedule": tensor_fingerprint(schedule), "seed": tensor_fingerprint(seed),
                   "context": tensor_fingerprint(context)}
        return self.parallel.agreed("stream requests", request, checked)

    def resume(self, state: StreamState, prompt_embeds: torch.Tensor | None = None, chunks: int | None = None) -> VideoStream:
        """Go on from ``state`` (``VideoStream.state``, or ``load_stream_state``), as a new ``VideoStream`` whose chunks
        continue the old one's numbering.

        ``prompt_embeds``: the prompt from the boundary on; None keeps the state's. With a new prompt, or a state without
        its rings, the frames the next chunk attends are re-encoded under the prompt first: exactly
        ``set_prompt(prompt, recache=True)`` at that boundary of the uninterrupted stream (the first chunk reports it
        as its ``prompt_switch``). A state with its rings and the same prompt goes on bit for bit, without a re-cache.
        ``chunks``: how many chunks to run from the boundary; None runs what the state's request had left (a live
        stream: until closed), so a finished video needs ``chunks`` to be extended."""
        def checked():
            return self._checked_resume(state, prompt_embeds, chunks)

        if self.parallel is None:
            return checked()
        request = {"state": tensor_fingerprint(getattr(state, "latents", state)), "chunk": getattr(state, "next_chunk", None),
                   "prompt_embeds": tensor_fingerprint(prompt_embeds), "chunks": chunks}
        return self.parallel.agreed("resumes", request, checked)

    def _checked_resume(self, state, prompt_embeds, chunks) -> VideoStream:
        if not isinstance(state, StreamState):
            raise TypeError(f"resume takes a StreamState (VideoStream.state() or load_stream_state(path)), got {type(state).__name__}")
        self._check_state_fits(state)
        embeds = state.prompt_embeds if prompt_embeds is None else check_prompt_embeds(prompt_embeds, self.dit.config.text_dim)
        if embeds.shape[0] != state.batch:
            raise StreamStateError(f"the prompt embeddings hold a batch of {embeds.shape[0]}; the state streams {state.batch}")
        embeds = embeds.to(self.dit.device)
        same_prompt = prompt_embeds is None or (embeds.shape == state.prompt_embeds.shape
                                                and torch.equal(embeds, state.prompt_embeds.to(embeds)))
        shape, sched = self._resumed_shape(state, chunks), state.schedule
        plan = self._checked_shape(shape, sched, f"resuming at chunk {state.next_chunk}, {state.width}x{state.height}")
        recache = not (state.has_rings and same_prompt)
        on_device = state.to(self.dit.device)
        return VideoStream(self.parts, embeds, shape, sched, plan, state.seed, first_chunk=state.next_chunk,
                           model=self.model_info, start=lambda run: run.restore(on_device, embeds, recache))

    def _check_state_fits(self, state: StreamState) -> None:
        """A state resumes only on the model, chunk size, device kind and decoder it came from."""
        mine = self.model_info
        differ = [k for k in ("config", "dtype", "weights") if state.model.get(k) != mine[k]]
        if differ:
            raise StreamStateError(f"this state comes from another model (its {', '.join(differ)} differ from this engine's): "
                                   "resume it on the engine, weights and dtype it ran on")
        if state.chunk_size != self.config.chunk_size:
            raise StreamStateError(f"the state streams chunks of {state.chunk_size} latent frames, this engine "
                                   f"{self.config.chunk_size}: resume it with EngineConfig(chunk_size={state.chunk_size})")
        if state.generator_device != self.dit.device.type:
            raise StreamStateError(f"the state's noise generator ran on {state.generator_device}, this engine on "
                                   f"{self.dit.device.type}: its noise cannot be continued there; resume it on a "
                                   f"{state.generator_device} engine")
        if self.decodes and state.next_chunk > 0:
            if state.decoder is None:
                raise StreamStateError("the state carries no decoder history (its stream decoded nothing), and this engine "
                                       "decodes: its first frames would not join the video's; resume it on an engine without a VAE")
            if state.decoder.name != self.vae.name:
                raise StreamStateError(f"the state's decoder history is {state.decoder.name!r}'s, this engine decodes with "
                                       f"{self.vae.name!r}: resume it with the same decoder")
        if not state.has_rings and state.schedule.window != "anchor":
            raise StreamStateError(f"schedule {state.schedule.name!r} keeps the full history: its state needs the rings "
                                   "(state(include_cache=True)) to resume")

    def _resumed_shape(self, state: StreamState, chunks) -> VideoShape:
        if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
            raise ValueError(f"chunks must be a positive integer (chunks to run from the state's boundary) or None, got {chunks!r}")
        if chunks is None and state.num_chunks is None:
            check_unbounded(state.schedule)
            total = None
        else:
            total = state.next_chunk + chunks if chunks is not None else state.num_chunks
            if total <= state.next_chunk:
                raise StreamStateError(f"the state is at the end of its video (chunk {state.next_chunk} of {state.num_chunks}): "
                                       "give chunks=N to extend it by N chunks")
            if state.schedule.window != "anchor" and total > state.num_chunks:
                raise StreamStateError(f"schedule {state.schedule.name!r} keeps the full history in rings sized for "
                                       f"{state.num_chunks} chunks: it can resume up to that end, not extend past it")
        M = state.chunk_size
        latent = (state.height // VAE_SPACE_STRIDE, state.width // VAE_SPACE_STRIDE)
        # a full-history ring is sized for the state's whole video: the plan keeps that size however far this goes
        planned = state.num_chunks if state.schedule.window != "anchor" else total
        return VideoShape(state.batch, None if total is None else planned * M, latent[0], latent[1], total)

    def generate(self, prompt_embeds, num_frames: int, height: int, width: int, schedule="self_forcing", seed: int = 0) -> GenerationResult:
        """Run the whole video; returns all latents ``[B, 16, F, h, w]`` and per-chunk timings."""
        if num_frames is None:
            raise ValueError("generate() runs a whole video: give num_frames (4k+1); iterate engine.stream(..., num_frames=None) "
                             "for an unbounded stream")
        chunks = list(self.stream(prompt_embeds, num_frames, height, width, schedule=schedule, seed=seed))
        return GenerationResult(latents=torch.cat([c.latents for c in chunks], dim=2), chunks=chunks)
