"""The streaming engine: chunk-by-chunk causal generation over ring KV caches, driven by a schedule.

Per chunk the schedule lists (resolution, timestep) steps. Low-res steps attend the low-res cache; the
low-res x0 is upsampled and renoised for the high-res steps, which attend the high-res cache. After the
last step, a t=0 recache writes the final x0's K/V at high res and, when the schedule keeps a low-res
cache, the area-downsampled x0's K/V at low res, so both caches agree with the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..attention import get_backend
from ..attention.rope import inv_freqs
from ..model.dit import WanDiT, engine_ops
from ..model.vae import WanVAE
from .cached_attention import WindowAttention
from .chunk_graphs import ChunkGraphs, cuda_graph_factory
from .decoding import ChunkDecoder
from . import precision as precision_rules
from .dit_runners import build_runner, runner_entry
from .kv_cache import RingKVCache
from .resample import upsample_latents
from .sampling import renoise, sigma_of, x0_from_flow
from .schedules import RESOLUTIONS, Schedule, resolve_schedule
from .timing import ChunkTimer
from .window import WindowPlan

# Wan VAE: 4x temporal, 8x spatial compression; the first latent frame decodes to one video frame.
VAE_TIME_STRIDE = 4
VAE_SPACE_STRIDE = 8


def chunk_video_frames(chunk: int, chunk_size: int) -> int:
    """Video frames a chunk decodes to: 4 per latent frame, except the very first latent frame (1)."""
    return VAE_TIME_STRIDE * chunk_size - (VAE_TIME_STRIDE - 1 if chunk == 0 else 0)


def check_video_request(num_frames, height, width, chunk_size: int, sched: Schedule, patch_size=(1, 2, 2)) -> int:
    """Check a requested video against the VAE, patch, chunk and schedule constraints; returns its latent frames."""
    M = chunk_size
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % VAE_TIME_STRIDE:
        raise ValueError(f"num_frames must be a positive integer of the form 4k+1 (e.g. 81), got {num_frames!r}")
    latent_frames = (num_frames - 1) // VAE_TIME_STRIDE + 1
    if latent_frames % M:
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

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        precision_rules.resolve(self)
        if runner_entry(self.dit).exported_graphs:
            if self.cuda_graphs or self.compile:
                raise ValueError(f"cuda_graphs and compile apply to dit='torch'; dit={self.dit!r} runs exported graphs")
            precision_rules.refuse_for_exported_graphs(self)


@dataclass
class ChunkResult:
    index: int
    latents: torch.Tensor  # [B, 16, M, h, w] float32, the chunk's final x0 at high resolution
    seconds: float  # wall time of the chunk (CUDA events on a GPU)
    video_frames: int  # frames this chunk decodes to
    forwards: dict[str, int]  # denoising forwards per resolution
    recache: dict[str, int]  # t=0 recache forwards per resolution
    tokens_attended: int  # key tokens attended, summed over this chunk's forwards (per layer)
    cache_bytes: int  # bytes held by all self-attention K/V caches
    frames: torch.Tensor | None = None  # [B, T, H, W, 3] uint8 video frames, when the engine has a VAE
    vae_seconds: float = 0.0  # time decoding this chunk (not part of ``seconds``; overlaps the next chunk on a GPU)
    run_mode: str = "eager"  # "eager", or with CUDA graphs "captured" / "replayed"

    @property
    def total_forwards(self) -> int:
        return sum(self.forwards.values()) + sum(self.recache.values())


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

    @property
    def frames(self) -> torch.Tensor | None:
        """All decoded frames ``[B, T, H, W, 3]`` uint8, when the engine has a VAE."""
        if self.chunks and self.chunks[0].frames is not None:
            return torch.cat([c.frames for c in self.chunks], dim=1)
        return None


@dataclass(frozen=True)
class VideoShape:
    batch: int
    latent_frames: int
    latent_height: int  # high resolution
    latent_width: int
    num_chunks: int


@dataclass
class _Resolution:
    """Everything one resolution needs during a stream: latent shape, token grid, RoPE frequencies, cache."""

    latent_hw: tuple[int, int]
    grid: tuple[int, int]
    freqs: torch.Tensor  # [head_dim / 2] float64, NTK-scaled when the schedule asks
    cache: RingKVCache


class Engine:
    def __init__(self, dit: WanDiT, config: EngineConfig | None = None, vae: WanVAE | None = None):
        self.dit = dit
        self.config = config or EngineConfig()
        self.attention = get_backend(self.config.attention)
        self.vae = vae
        self.text_encoder = None  # set by from_pretrained
        if vae is not None and vae.config.z_dim != dit.config.out_dim:
            raise ValueError(f"the VAE decodes {vae.config.z_dim}-channel latents but the DiT makes {dit.config.out_dim}")
        if vae is not None and vae.conv2.weight.device != dit.device:
            raise ValueError(f"the VAE is on {vae.conv2.weight.device} but the DiT on {dit.device}; move them to one device")
        if self.config.cuda_graphs and dit.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, but it is on {dit.device}; set cuda_graphs=False")
        precision_rules.check_engine(self.config, self.attention, dit)
        precision_rules.apply_linears(self.config, dit)
        self.ops = engine_ops(self.config.compile)
        self.forwards = build_runner(self.config.dit, dit, self.attention, self.ops, self.config.engine_dir)

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
    ) -> "Engine":
        """DiT, VAE and (when ``text_encoder``) UMT5 + tokenizer from a Wan2.1 folder; ``checkpoint`` (for example
        a Self-Forcing .pt) replaces the folder's DiT weights. The encoder is kept on ``engine.text_encoder``."""
        from ..model_dir import load_folder_dit
        from ..text_encoder import load_text_encoder
        from ..vae_checkpoint import load_vae

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        need = ("vae", "text_encoder", "tokenizer") if text_encoder else ("vae",)
        dit, files = load_folder_dit(model_dir, checkpoint, dtype, device, need)
        vae_dtype = torch.float32 if device.type == "cpu" else dtype
        engine = cls(dit, config, vae=load_vae(files.vae, dtype=vae_dtype, device=device))
        engine.text_encoder = load_text_encoder(files.text_encoder, files.tokenizer, dtype=dtype, device=device) if text_encoder else None
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
            num_chunks=latent_frames // self.config.chunk_size,
        )

    def _check_positions(self, plan: WindowPlan, shape: VideoShape) -> None:
        cfg = self.dit.config
        limit = cfg.rope_max_positions
        last = plan.max_temporal_position(shape.num_chunks)
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
        cache = RingKVCache(plan, cfg.num_layers, shape.batch, gh * gw, cfg.num_heads, cfg.head_dim, self.dit.dtype, self.dit.device,
                            rotate_keys=self.forwards.rotate_keys, kv_dtype=precision_rules.kv_torch_dtype(self.config))
        return _Resolution((h, w), (gh, gw), inv_freqs(cfg.head_dim, cfg.rope_theta, scale), cache)

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
        """Generate chunk by chunk, yielding each chunk as soon as it is ready.

        Without a VAE that is when it is denoised. With one, results carry decoded frames; on a GPU the
        decode of chunk k overlaps the denoising of chunk k+1, so chunk k arrives after chunk k+1 denoised.
        Inputs are checked here, before the first chunk runs.
        """
        sched = resolve_schedule(schedule)
        if prompt_embeds.dim() == 2:
            prompt_embeds = prompt_embeds.unsqueeze(0)
        shape = self.video_shape(prompt_embeds, num_frames, height, width, sched)
        plan = sched.window_plan(self.config.chunk_size, shape.latent_frames)
        self._check_positions(plan, shape)
        self.forwards.check(sched, self.config.chunk_size, shape)
        return self._run(prompt_embeds, shape, sched, plan, seed)

    @torch.no_grad()
    def _run(self, prompt_embeds, shape: VideoShape, sched: Schedule, plan: WindowPlan, seed: int) -> Iterator[ChunkResult]:
        dit, M = self.dit, self.config.chunk_size
        device = dit.device
        cross_kv = self.forwards.prepare_cross(dit.cross_kv(prompt_embeds.to(device)))
        used = ("low", "high") if sched.uses_low else ("high",)
        res = {name: self._resolution(name, shape, sched, plan) for name in used}
        cache_bytes = sum(r.cache.nbytes for r in res.values())
        rope_dtype = torch.promote_types(dit.dtype, torch.float32)
        rope_positions = max(plan.max_temporal_position(shape.num_chunks) + 1, *(g for r in res.values() for g in r.grid))
        gen = torch.Generator(device=device).manual_seed(seed)
        timer = ChunkTimer(device)
        decoder = ChunkDecoder(self.vae, device) if self.vae is not None else None
        graphs = ChunkGraphs(self.graph_factory())
        t_clean = torch.zeros((shape.batch, M), device=device)  # [B, M] recache timesteps

        def body(steps, noises: list[torch.Tensor], views: dict) -> torch.Tensor:
            attn = {name: WindowAttention(res[name].cache, view, self.attention) for name, view in views.items()}
            return self._denoise_chunk(steps, noises, attn, sched, cross_kv, t_clean)

        for c in range(shape.num_chunks):
            timer.start()
            steps = sched.steps(c)
            views = {name: r.cache.view(c, r.grid, r.freqs, rope_dtype, rope_positions) for name, r in res.items()}
            noises = [
                torch.randn((shape.batch, dit.config.in_dim, M) + res[s.resolution].latent_hw, generator=gen, device=device)  # [B, 16, M, h, w]
                for s in steps
            ]
            x0, mode = graphs.run(steps, noises, views, body)
            forwards = {name: sum(s.resolution == name for s in steps) for name in RESOLUTIONS}
            recache = {name: int(name in res) for name in RESOLUTIONS}
            passes = [s.resolution for s in steps] + list(res)
            result = ChunkResult(
                index=c,
                latents=x0,
                seconds=timer.stop(),
                video_frames=chunk_video_frames(c, M),
                forwards=forwards,
                recache=recache,
                tokens_attended=sum(views[name].key_tokens for name in passes),
                cache_bytes=cache_bytes,
                run_mode=self.forwards.run_mode or mode,
            )
            if decoder is None:
                yield result
            else:
                yield from decoder.submit(result)
        if decoder is not None:
            yield from decoder.flush()

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
        chunks = list(self.stream(prompt_embeds, num_frames, height, width, schedule=schedule, seed=seed))
        return GenerationResult(latents=torch.cat([c.latents for c in chunks], dim=2), chunks=chunks)
