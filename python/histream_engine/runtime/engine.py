"""The streaming engine: chunk-by-chunk causal generation over ring KV caches, driven by a schedule.

Per chunk the schedule lists (resolution, timestep) steps. Low-res steps attend the low-res cache; the
low-res x0 is upsampled and renoised for the high-res steps, which attend the high-res cache. After the
last step, a t=0 recache writes the final x0's K/V at high res and, when the schedule keeps a low-res
cache, the area-downsampled x0's K/V at low res, so both caches agree with the output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..attention import get_backend
from ..attention.rope import inv_freqs
from ..model.dit import WanDiT, engine_ops
from ..model.decoder import VideoDecoder
from .cache.layer_attention import WindowAttention
from .denoise.chunk_graphs import cuda_graph_factory
from .runners import precision as precision_rules
from .runners.registry import build_runner, runner_entry
from .denoise.finite_check import check_finite_latents
from .cache.kv_cache import RingKVCache
from .memory_estimate import check_fits, estimate_stream
from .parallel.group import PARALLEL_MODES, engine_fingerprint, resolve_group, tensor_fingerprint
from .request_checks import check_chunk_size, check_model_dtype, check_prompt_embeds, check_seed, resolve_device
from .denoise.resample import upsample_latents
from .results import VAE_SPACE_STRIDE, VAE_TIME_STRIDE, ChunkResult, GenerationResult, PromptSwitch, chunk_video_frames
from .stream import VideoStream
from .denoise.sampling import renoise, sigma_of, x0_from_flow
from .denoise.schedules import RESOLUTIONS, Schedule, resolve_schedule
from .cache.window import WindowPlan

def check_video_request(num_frames, height, width, chunk_size: int, sched: Schedule, patch_size=(1, 2, 2)) -> int | None:
    """Check a requested video against the VAE, patch, chunk and schedule constraints; returns its latent frames
    (None for an unbounded stream, ``num_frames=None``)."""
    M = chunk_size
    if num_frames is None:
        check_unbounded(sched)
        latent_frames = None
    elif not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1 or (num_frames - 1) % VAE_TIME_STRIDE:
        raise ValueError(f"num_frames must be a positive integer of the form 4k+1 (e.g. 81), or None for an unbounded stream, "
                         f"got {num_frames!r}")
    else:
        latent_frames = (num_frames - 1) // VAE_TIME_STRIDE + 1
    if latent_frames is not None and latent_frames % M:
        ok = [(VAE_TIME_STRIDE * M * n - VAE_TIME_STRIDE + 1) for n in range(1, 8)]
        raise ValueError(
            f"num_frames={num_frames} gives {latent_frames} latent frames, not a multiple of the chunk size {M}; "
            f"(frames - 1) / 4 + 1 must be divisible by {M}: use e.g. {ok}"
        )
    unit = VAE_SPACE_STRIDE * max(patch_size[1:])
    if sched.uses_low:
        unit *= sched.low_factor
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0 or v % unit:
            why = f" (16 at the low resolution, which is 1/{sched.low_factor} of it)" if sched.uses_low else ""
            raise ValueError(f"{name} must be a positive multiple of {unit}{why} for schedule {sched.name!r}, got {v!r}")
    return latent_frames


def check_unbounded(sched: Schedule) -> None:
    """An unbounded stream needs constant memory and a bounded RoPE range: a sliding window with window positions."""
    if sched.window != "anchor":
        raise ValueError(f"num_frames=None (an unbounded stream) needs a sliding-window schedule; {sched.name!r} keeps the "
                         "full history (window='full'), whose cache grows without bound: use histream, histream_plus, "
                         "no_drc or two_step with positions='window'")
    if sched.positions != "window":
        raise ValueError(f"num_frames=None (an unbounded stream) needs positions='window'; {sched.name!r} uses absolute "
                         "temporal positions, which leave the model's trained RoPE range: pass "
                         f"SCHEDULES[{sched.name!r}].replace(positions='window') (or \"positions\": \"window\" in a schedule dict)")


@dataclass
class EngineConfig:
    chunk_size: int = 3  # latent frames per chunk (M)
    attention: str = "torch"  # attention backend name, see histream_engine.attention_backends()
    cuda_graphs: bool = False  # replay steady-state chunks as CUDA graphs (see runtime.chunk_graphs); CUDA only
    compile: bool = False  # torch.compile the blocks' elementwise parts (model.dit.BlockOps)
    dit: str = "torch"  # who runs the DiT forwards: torch, or exported graphs (onnxruntime, tensorrt); runtime.dit_runners lists them
    engine_dir: str | None = None  # for onnxruntime: a histream export folder; for tensorrt: a histream build-trt folder
    kv_dtype: str | None = None  # "float8_e4m3fn": e4m3 ring caches with per-(slot, head) scales (runtime.precision)
    linear_dtype: str | None = None  # "float8_e4m3fn": the blocks' linears as scaled FP8 matmuls (model.fp8_linear)
    precision: str | None = None  # "fp8": both of the above and the FP8 attention core (runtime.precision.FP8_CORES)
    parallel: str | None = None  # "ulysses": one stream over a process group's ranks (runtime.ulysses)
    group: object = None  # with parallel: a torch.distributed ProcessGroup; None = the default group

    def __post_init__(self):
        check_chunk_size(self.chunk_size)
        precision_rules.resolve(self)
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.group is not None and self.parallel is None:
            raise ValueError("group= is the process group of a sequence-parallel engine: set parallel='ulysses' with it")
        if runner_entry(self.dit).exported_graphs:
            if self.cuda_graphs or self.compile:
                raise ValueError(f"cuda_graphs and compile apply to dit='torch'; dit={self.dit!r} runs exported graphs")
            if self.parallel:
                raise ValueError(f"parallel={self.parallel!r} shards the torch runner's forwards; dit={self.dit!r} runs exported "
                                 "whole-model graphs, one process each: use dit='torch' with parallel, or no parallel")
            precision_rules.refuse_for_exported_graphs(self)


@dataclass(frozen=True)
class VideoShape:
    batch: int
    latent_frames: int | None  # None: unbounded
    latent_height: int  # high resolution
    latent_width: int
    num_chunks: int | None


@dataclass
class _Resolution:
    """Everything one resolution needs during a stream: latent shape, token grid, RoPE frequencies, cache."""

    latent_hw: tuple[int, int]
    grid: tuple[int, int]
    freqs: torch.Tensor  # [head_dim / 2] float64, NTK-scaled when the schedule asks
    cache: RingKVCache


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
        self.ops = engine_ops(self.config.compile)
        self.forwards = build_runner(self.config.dit, dit, self.attention, self.ops, self.config.engine_dir, self.parallel)

    @property
    def decodes(self) -> bool:
        """Whether this process decodes frames: always, but for the ranks after the first of a parallel group (every
        rank holds the same latents; one decode is enough)."""
        return self.vae is not None and (self.parallel is None or self.parallel.is_first)

    def graph_factory(self):
        """What makes a chunk's graph, or None to run every chunk eagerly."""
        return cuda_graph_factory() if self.config.cuda_graphs else None

    @classmethod
    def from_pretrained(
        cls,
        model_dir,
        checkpoint=None,
        dtype: torch.dtype = torch.bfloat16,
        device=None,
        config: EngineConfig | None = None,
        text_encoder: bool = True,
        vae: str = "wan",
        tae_path=None,
    ) -> "Engine":
        """DiT, VAE and (when ``text_encoder``) UMT5 + tokenizer from a Wan2.1 folder; ``checkpoint`` (for example
        a Self-Forcing .pt) replaces the folder's DiT weights. The encoder is kept on ``engine.text_encoder``.
        ``vae="tae"`` decodes with TAEHV from ``tae_path`` (taew2_1.pth or .safetensors) instead of the folder's VAE."""
        from ..model_dir import load_folder_dit
        from ..taehv_checkpoint import load_taehv
        from ..text_encoder import load_text_encoder
        from ..vae_checkpoint import load_vae

        if vae not in ("wan", "tae") or (vae == "tae") != (tae_path is not None):
            raise ValueError(f"vae must be 'wan', or 'tae' with tae_path (taew2_1.pth); got vae={vae!r}, tae_path={tae_path!r}")
        device = resolve_device(device)
        need = ("text_encoder", "tokenizer") if text_encoder else ()
        need = need + ("vae",) if vae == "wan" else need
        vae_dtype = torch.float32 if device.type == "cpu" else dtype

        def load():
            decoder = load_taehv(tae_path, dtype=vae_dtype, device=device) if vae == "tae" else None  # before the DiT: a bad path fails fast
            dit, files = load_folder_dit(model_dir, checkpoint, dtype, device, need)
            decoder = decoder or load_vae(files.vae, dtype=vae_dtype, device=device)
            encoder = load_text_encoder(files.text_encoder, files.tokenizer, dtype=dtype, device=device) if text_encoder else None
            return dit, decoder, encoder

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
    def video_shape(self, prompt_embeds: torch.Tensor, num_frames: int, height: int, width: int, sched: Schedule) -> VideoShape:
        latent_frames = check_video_request(num_frames, height, width, self.config.chunk_size, sched, self.dit.config.patch_size)
        self.dit.check_context(prompt_embeds)
        return VideoShape(
            batch=prompt_embeds.shape[0],
            latent_frames=latent_frames,
            latent_height=height // VAE_SPACE_STRIDE,
            latent_width=width // VAE_SPACE_STRIDE,
            num_chunks=None if latent_frames is None else latent_frames // self.config.chunk_size,
        )

    @staticmethod
    def position_horizon(plan: WindowPlan, shape: VideoShape) -> int:
        """Chunks to look at for the largest temporal position: all of a bounded video; for an unbounded stream
        (window positions, checked) enough for the window to reach its steady size."""
        return shape.num_chunks if shape.num_chunks is not None else plan.slots + 2

    def _check_positions(self, plan: WindowPlan, shape: VideoShape) -> None:
        cfg = self.dit.config
        limit = cfg.rope_max_positions
        last = plan.max_temporal_position(self.position_horizon(plan, shape))
        if last >= limit:
            raise ValueError(
                f"{shape.latent_frames} latent frames need temporal RoPE position {last}, past the model's {limit} trained "
                f"positions with positions={plan.positions!r}; use a schedule with positions='window' (re-indexed inside "
                "the sliding window) for long or unbounded streams"
            )
        grid = (shape.latent_height // cfg.patch_size[1], shape.latent_width // cfg.patch_size[2])
        if max(grid) > limit:
            raise ValueError(f"token grid {grid} exceeds the model's {limit} RoPE positions; lower the resolution")

    def _resolution(self, name: str, shape: VideoShape, sched: Schedule, plan: WindowPlan) -> _Resolution:
        cfg = self.dit.config
        factor = sched.low_factor if name == "low" else 1
        h, w = shape.latent_height // factor, shape.latent_width // factor
        gh, gw = h // cfg.patch_size[1], w // cfg.patch_size[2]
        scale = (1.0, max(1.0, gh / cfg.train_grid[0]), max(1.0, gw / cfg.train_grid[1])) if sched.ntk else (1.0, 1.0, 1.0)
        heads = cfg.num_heads // self.forwards.head_shards  # a sequence-parallel rank keeps only its own heads' ring
        cache = RingKVCache(plan, cfg.num_layers, shape.batch, gh * gw, heads, cfg.head_dim, self.dit.dtype, self.dit.device,
                            rotate_keys=self.forwards.rotate_keys, kv_dtype=precision_rules.kv_torch_dtype(self.config))
        return _Resolution((h, w), (gh, gw), inv_freqs(cfg.head_dim, cfg.rope_theta, scale), cache)

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
            sched = resolve_schedule(schedule)
            embeds = check_prompt_embeds(prompt_embeds, self.dit.config.text_dim)
            check_seed(seed)
            shape = self.video_shape(embeds, num_frames, height, width, sched)
            plan = sched.window_plan(self.config.chunk_size, shape.latent_frames)
            self._check_positions(plan, shape)
            check_fits(self.memory_estimate(shape, sched, plan), self.dit.device,
                       f"{'a live stream' if num_frames is None else f'{num_frames} frames'} at {width}x{height}")
            horizon = shape if shape.latent_frames is not None else dataclasses.replace(
                shape, latent_frames=self.position_horizon(plan, shape) * self.config.chunk_size)  # every window size it meets
            self.forwards.check(sched, self.config.chunk_size, horizon)
            return VideoStream(self, embeds, shape, sched, plan, seed)

        if self.parallel is None:
            return checked()
        request = {"prompt_embeds": tensor_fingerprint(prompt_embeds), "num_frames": num_frames, "height": height,
                   "width": width, "schedule": tensor_fingerprint(schedule), "seed": tensor_fingerprint(seed)}
        return self.parallel.agreed("stream requests", request, checked)

    def memory_estimate(self, shape: VideoShape, sched: Schedule, plan: WindowPlan):
        # the Wan VAE's decode dominates a step's memory; TAEHV's (a few narrow 2D convs) is small next to the DiT's
        vae_dim = getattr(getattr(self.vae, "config", None), "dim", None)
        return estimate_stream(self.dit.config, self.dit.dtype, self.dit.device, shape.batch, self.config.chunk_size,
                               (shape.latent_height, shape.latent_width), sched.low_factor if sched.uses_low else None,
                               plan.slots, vae_dim if self.decodes else None, self.forwards.head_shards)

    def _denoise_chunk(self, steps, noises, attn: dict[str, WindowAttention], sched: Schedule, cross_kv, t_clean) -> torch.Tensor:
        """One chunk's device work: the schedule's steps, then the t=0 recache of every resolution's cache.

        Everything chunk-dependent arrives as tensors (``noises``, the views inside ``attn``), so this same
        function runs eagerly or inside a CUDA graph. Returns the final x0 ``[B, 16, M, h, w]`` float32.
        """
        dit, backend, forwards = self.dit, self.attention, self.forwards
        x0, prev = None, None
        for step, noise in zip(steps, noises):
            sigma = sigma_of(step.timestep)
            if x0 is None:
                x = noise
            else:
                base = x0 if step.resolution == prev else upsample_latents(x0, sched.low_factor, sched.upsample)
                x = renoise(base, noise, sigma)
            t_frames = torch.full_like(t_clean, step.timestep)  # [B, M]
            flow = forwards.step(step.resolution, x, t_frames, cross_kv, attn[step.resolution])
            x0 = x0_from_flow(x, flow.float(), sigma)
            prev = step.resolution
        forwards.recache_latents("high", x0, t_clean, cross_kv, attn["high"])
        if "low" in attn:
            patches = backend.downsample_patches(x0, sched.low_factor, dit.config.patch_size)  # [B, M, h, w, P]
            forwards.recache_patches("low", patches, t_clean, cross_kv, attn["low"])
        return x0

    def generate(self, prompt_embeds, num_frames: int, height: int, width: int, schedule="self_forcing", seed: int = 0) -> GenerationResult:
        """Run the whole video; returns all latents ``[B, 16, F, h, w]`` and per-chunk timings."""
        if num_frames is None:
            raise ValueError("generate() runs a whole video: give num_frames (4k+1); iterate engine.stream(..., num_frames=None) "
                             "for an unbounded stream")
        chunks = list(self.stream(prompt_embeds, num_frames, height, width, schedule=schedule, seed=seed))
        return GenerationResult(latents=torch.cat([c.latents for c in chunks], dim=2), chunks=chunks)
