"""The engine: a DiT (and optionally a VAE) with its settings, the front every entry point streams through.

``Engine.stream`` checks a request and returns a ``VideoStream`` (``stream``), which runs chunk after chunk over ring
KV caches driven by a schedule. What a chunk does lives in ``denoise/``, where its K/V live in ``cache/``, how the
ranks of a sequence-parallel group agree in ``parallel/``, and who runs the forwards in ``runners/``; the engine builds
the ``StreamParts`` a stream runs on and hands them over.
"""

from __future__ import annotations

import dataclasses

import torch

from ..attention import get_backend
from ..model.decoder import VideoDecoder
from ..model.dit import WanDiT, engine_ops
from .engine_config import EngineConfig
from .memory_estimate import check_fits, estimate_stream
from .parallel.group import engine_fingerprint, resolve_group, tensor_fingerprint
from .parts import StreamParts
from .request_checks import check_model_dtype, check_prompt_embeds, check_seed, resolve_device
from .results import GenerationResult
from .runners import precision as precision_rules
from .runners.registry import build_runner
from .denoise.chunk_graphs import cuda_graph_factory
from .denoise.schedules import Schedule, resolve_schedule
from .stream import VideoStream
from .video_request import VideoShape, check_positions, position_horizon, video_shape


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

    def _checked_stream(self, prompt_embeds, num_frames, height, width, schedule, seed) -> VideoStream:
        """Every check a request goes through, in order, then its stream (not started)."""
        sched = resolve_schedule(schedule)
        embeds = check_prompt_embeds(prompt_embeds, self.dit.config.text_dim)
        check_seed(seed)
        shape = self.video_shape(embeds, num_frames, height, width, sched)
        plan = sched.window_plan(self.config.chunk_size, shape.latent_frames)
        check_positions(self.dit.config, plan, shape)
        check_fits(self.memory_estimate(shape, sched, plan), self.dit.device,
                   f"{'a live stream' if num_frames is None else f'{num_frames} frames'} at {width}x{height}")
        horizon = shape if shape.latent_frames is not None else dataclasses.replace(
            shape, latent_frames=position_horizon(plan, shape) * self.config.chunk_size)  # every window size it meets
        self.runner.check(sched, self.config.chunk_size, horizon)
        return VideoStream(self.parts, embeds, shape, sched, plan, seed)

    # ---- public API ----
    def stream(
        self,
        prompt_embeds: torch.Tensor,  # [B, L, text_dim] or [L, text_dim]
        num_frames: int | None,
        height: int,
        width: int,
        schedule: "str | dict | Schedule" = "self_forcing",
        seed: int = 0,
    ) -> VideoStream:
        """Generate chunk by chunk, yielding each chunk as soon as it is ready; ``num_frames=None`` streams until
        ``close()`` (sliding-window schedules with ``positions='window'`` only). The returned ``VideoStream`` is an
        iterator with ``close()`` and ``set_prompt(embeds, recache=True)`` (``runtime.stream``).

        Without a VAE that is when it is denoised. With one, results carry decoded frames; on a GPU the
        decode of chunk k overlaps the denoising of chunk k+1, so chunk k arrives after chunk k+1 denoised.
        Inputs are checked here, before the first chunk runs. On a sequence-parallel engine every rank makes this
        call; they compare their arguments and checks first (``ParallelGroup.agreed``), every rank yields the same
        latents, and the first rank alone decodes frames.
        """
        def checked():
            return self._checked_stream(prompt_embeds, num_frames, height, width, schedule, seed)

        if self.parallel is None:
            return checked()
        request = {"prompt_embeds": tensor_fingerprint(prompt_embeds), "num_frames": num_frames, "height": height,
                   "width": width, "schedule": tensor_fingerprint(schedule), "seed": tensor_fingerprint(seed)}
        return self.parallel.agreed("stream requests", request, checked)

    def generate(self, prompt_embeds, num_frames: int, height: int, width: int, schedule="self_forcing", seed: int = 0) -> GenerationResult:
        """Run the whole video; returns all latents ``[B, 16, F, h, w]`` and per-chunk timings."""
        if num_frames is None:
            raise ValueError("generate() runs a whole video: give num_frames (4k+1); iterate engine.stream(..., num_frames=None) "
                             "for an unbounded stream")
        chunks = list(self.stream(prompt_embeds, num_frames, height, width, schedule=schedule, seed=seed))
        return GenerationResult(latents=torch.cat([c.latents for c in chunks], dim=2), chunks=chunks)
