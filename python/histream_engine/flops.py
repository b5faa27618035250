"""FLOP model: what each forward, chunk and output frame of a schedule costs, from the config alone.

Counts multiply-adds as 2 FLOPs. Per DiT forward over Lq query tokens attending Lk key tokens:
- linear: per token and layer, self-attn q/k/v/o (4 d^2), cross-attn q/o (2 d^2; the text K/V are
  computed once per prompt), FFN (2 d f); plus patch embedding and the head; a recache pass has no head,
  and its last layer computes only K/V (nothing reads the rest);
- self-attention: QK^T and PV, 4 Lq Lk d per layer;
- cross-attention: 4 Lq L_text d per layer.
Elementwise work (norms, RoPE, modulation, softmax) is left out.

It shares ``Schedule.window_plan`` with the runtime, so it counts exactly the frames the runtime attends.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import WanConfig
from .model.decoder import VAE_SPACE_STRIDE, VAE_TIME_STRIDE
from .runtime.results import chunk_video_frames
from .runtime.denoise.schedules import Schedule, resolve_schedule


@dataclass(frozen=True)
class Flops:
    linear: float = 0.0
    self_attn: float = 0.0
    cross_attn: float = 0.0

    @property
    def total(self) -> float:
        return self.linear + self.self_attn + self.cross_attn

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.linear + other.linear, self.self_attn + other.self_attn, self.cross_attn + other.cross_attn)

    def scaled(self, k: float) -> "Flops":
        return Flops(self.linear * k, self.self_attn * k, self.cross_attn * k)


def forward_flops(cfg: WanConfig, query_tokens: int, key_tokens: int, text_len: int | None = None, cache_only: bool = False) -> Flops:
    """One forward. ``cache_only`` is a recache pass: no head, and the last layer computes only its K/V."""
    d, f, L = cfg.dim, cfg.ffn_dim, cfg.num_layers
    text_len = cfg.text_len if text_len is None else text_len
    attending = L - 1 if cache_only else L  # layers whose attention, cross-attention and FFN run
    per_token = attending * 2 * (6 * d * d + 2 * d * f) + 2 * cfg.in_dim * cfg.patch_volume * d
    per_token += 2 * 2 * d * d if cache_only else 2 * d * cfg.out_dim * cfg.patch_volume  # last K/V, or the head
    return Flops(
        linear=float(per_token * query_tokens),
        self_attn=float(4 * query_tokens * key_tokens * d * attending),
        cross_attn=float(4 * query_tokens * text_len * d * attending),
    )


@dataclass(frozen=True)
class ChunkFlops:
    index: int
    denoise: Flops  # the schedule's steps
    recache: Flops  # the t=0 forwards that refresh the caches
    video_frames: int

    @property
    def total(self) -> float:
        return self.denoise.total + self.recache.total


def tokens_per_frame(cfg: WanConfig, height: int, width: int) -> int:
    """Tokens of one latent frame of a ``height`` x ``width`` video."""
    return (height // VAE_SPACE_STRIDE // cfg.patch_size[1]) * (width // VAE_SPACE_STRIDE // cfg.patch_size[2])


def schedule_flops(
    cfg: WanConfig,
    schedule: "str | dict | Schedule",
    num_frames: int,
    height: int,
    width: int,
    chunk_size: int = 3,
    text_len: int | None = None,
) -> list[ChunkFlops]:
    """FLOPs of every chunk of a video generated with ``schedule`` at ``height`` x ``width`` (the high resolution)."""
    sched = resolve_schedule(schedule)
    latent_frames = (num_frames - 1) // VAE_TIME_STRIDE + 1
    plan = sched.window_plan(chunk_size, latent_frames)
    S = {"high": tokens_per_frame(cfg, height, width)}
    if sched.uses_low:
        S["low"] = tokens_per_frame(cfg, height // sched.low_factor, width // sched.low_factor)
    chunks = []
    for c in range(latent_frames // chunk_size):
        visible = len(plan.visible_frames(c))
        cost = {r: forward_flops(cfg, chunk_size * s, visible * s, text_len) for r, s in S.items()}
        recache_cost = {r: forward_flops(cfg, chunk_size * s, visible * s, text_len, cache_only=True) for r, s in S.items()}
        denoise = sum((cost[step.resolution] for step in sched.steps(c)), Flops())
        recache = sum(recache_cost.values(), Flops())
        chunks.append(ChunkFlops(c, denoise, recache, chunk_video_frames(c, chunk_size)))
    return chunks


def flops_per_frame(cfg: WanConfig, schedule, num_frames: int, height: int, width: int, chunk_size: int = 3) -> float:
    """All FLOPs (denoising + recache) of a video divided by its output frames."""
    chunks = schedule_flops(cfg, schedule, num_frames, height, width, chunk_size)
    return sum(c.total for c in chunks) / sum(c.video_frames for c in chunks)


def vae_flops_per_frame(height: int, width: int, config=None) -> float:
    """Wan VAE decoder FLOPs per output video frame in the steady state (one latent frame -> 4 frames).

    Counted exactly by running the decoder on meta tensors (shapes only, no arithmetic) with hooks on every
    convolution (2 * out elements * in channels * kernel volume) and the per-frame attention (4 * (HW)^2 * C).
    """
    import torch

    from .model.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        vae = WanVAE(config or VAEConfig())
    return _decoder_flops_per_frame(vae, height, width)


def vae_replay_flops(height: int, width: int, config=None) -> float:
    """Wan VAE decoder FLOPs of ``WanVAE.load_state`` on a stream's saved decoder state once the stream is past the
    decoder's reach: the kept latent frames (``state_shapes``; 39 for the Wan2.1 VAE in chunks of 3) decoded again.
    The replay starts warm and decodes whole chunks, so each of its latent frames costs a steady one: 4 times
    ``vae_flops_per_frame``."""
    import torch

    from .model.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        vae = WanVAE(config or VAEConfig())
    kept = vae.state_shapes(1, height // VAE_SPACE_STRIDE, width // VAE_SPACE_STRIDE)["latents"][2]
    return kept * VAE_TIME_STRIDE * _decoder_flops_per_frame(vae, height, width)


def taehv_flops_per_frame(height: int, width: int, config=None) -> float:
    """TAEHV decoder FLOPs per output video frame in the steady state, counted as ``vae_flops_per_frame`` counts.
    Its MemBlocks' first convs run as one conv of twice the outputs on half the inputs: the same FLOPs."""
    import torch

    from .model.taehv import TAEHV, TAEHVConfig

    with torch.device("meta"):
        vae = TAEHV(config or TAEHVConfig())
    return _decoder_flops_per_frame(vae, height, width)


def _decoder_flops_per_frame(vae, height: int, width: int) -> float:
    """Counted by torch's ``FlopCounterMode`` on meta tensors (no memory, no arithmetic, no global patched): every
    convolution, module or functional (TAEHV's fused MemBlock conv), and the attention block's matmuls, at 2 FLOPs a
    multiply-add, over one steady-state latent frame (4 video frames) once the first has primed the causal history."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    state = vae.new_state()
    z = torch.zeros(1, vae.latent_channels, 1, height // VAE_SPACE_STRIDE, width // VAE_SPACE_STRIDE, device="meta")
    vae.decode(z, state)  # the first latent frame (1 video frame) primes the causal history
    with FlopCounterMode(display=False) as counter:
        vae.decode(z, state)
    return counter.get_total_flops() / VAE_TIME_STRIDE


def precision_peak(f: Flops, bf16_peak: float, fp8_peak: float, fp8_linear: bool, fp8_attention: bool) -> float:
    """The peak FLOP/s of ``f`` when its FP8 parts (linears, self-attention) run at ``fp8_peak`` and the rest at
    ``bf16_peak``: total FLOPs over the time each part takes at its own peak. Achieved / this is the utilisation of
    an FP8 run; with both parts FP8, nearly all of a forward (cross-attention stays bf16) counts at the FP8 peak."""
    fast = (f.linear if fp8_linear else 0.0) + (f.self_attn if fp8_attention else 0.0)
    return f.total / (fast / fp8_peak + (f.total - fast) / bf16_peak)


# ---- sequence parallelism (runtime.ulysses): per-rank work and what each rank sends ----

H100_SXM = {"peak_flops": 550e12, "link_bytes_per_s": 450e9}  # effective dense bf16; NVLink 4 per direction per GPU


def exchange_bytes(cfg: WanConfig, query_tokens_per_frame: int, frames: int, ranks: int, item: int, cache_only: bool = False) -> float:
    """Bytes one rank sends to the others during one sequence-parallel forward over ``frames`` latent frames of
    ``query_tokens_per_frame`` tokens, averaged over the ranks (exact for that average where N does not divide a
    frame, as ``ulysses.Exchange`` counts): per attending layer, Q, K and V dealt out by head and the output
    dealt back by token, each ``L * dim * (N - 1) / N^2`` elements (a recache pass's last layer deals out only K and
    V); then the head's output gathered, padded to the largest slice."""
    if ranks == 1:
        return 0.0
    L = query_tokens_per_frame * frames
    one = L * cfg.dim * (ranks - 1) / ranks**2  # elements of one exchanged tensor
    exchanges = 4 * (cfg.num_layers - 1) + 2 if cache_only else 4 * cfg.num_layers
    gather = 0 if cache_only else frames * -(-query_tokens_per_frame // ranks) * cfg.out_dim * cfg.patch_volume * (ranks - 1)
    return float(item * (exchanges * one + gather))


def schedule_exchange_bytes(cfg: WanConfig, schedule, num_frames: int, height: int, width: int, ranks: int, item: int,
                            chunk_size: int = 3) -> list[float]:
    """Bytes a rank sends per chunk of a video (every denoising forward and recache pass), averaged over the ranks."""
    sched = resolve_schedule(schedule)
    latent_frames = (num_frames - 1) // VAE_TIME_STRIDE + 1
    S = {"high": tokens_per_frame(cfg, height, width)}
    if sched.uses_low:
        S["low"] = tokens_per_frame(cfg, height // sched.low_factor, width // sched.low_factor)
    out = []
    for c in range(latent_frames // chunk_size):
        steps = sum(exchange_bytes(cfg, S[s.resolution], chunk_size, ranks, item) for s in sched.steps(c))
        recache = sum(exchange_bytes(cfg, s, chunk_size, ranks, item, cache_only=True) for s in S.values())
        out.append(steps + recache)
    return out


@dataclass(frozen=True)
class ParallelPrediction:
    ranks: int
    flops_per_rank_per_frame: float
    bytes_per_rank_per_frame: float
    compute_s_per_frame: float
    comm_s_per_frame: float

    @property
    def s_per_frame(self) -> float:
        """Compute plus communication, not overlapped: each all-to-all waits for the projections before it and the
        attention after it waits for the all-to-all, as ``runtime.ulysses`` runs them."""
        return self.compute_s_per_frame + self.comm_s_per_frame


def predict_parallel(cfg: WanConfig, schedule, num_frames: int, height: int, width: int, ranks: int, item: int = 2,
                     peak_flops: float = H100_SXM["peak_flops"], link_bytes_per_s: float = H100_SXM["link_bytes_per_s"],
                     chunk_size: int = 3) -> ParallelPrediction:
    """Denoising seconds per output frame on ``ranks`` GPUs: every FLOP of the model split N ways (tokens for the
    linear layers and cross-attention, heads for self-attention) at ``peak_flops`` each, plus the bytes each rank sends
    at ``link_bytes_per_s``. Refuses a world size the heads do not divide, as the engine does."""
    if cfg.num_heads % ranks:
        raise ValueError(f"{cfg.num_heads} heads are not divisible by {ranks} ranks")
    chunks = schedule_flops(cfg, schedule, num_frames, height, width, chunk_size)
    frames = sum(c.video_frames for c in chunks)
    flops = sum(c.total for c in chunks) / ranks / frames
    sent = sum(schedule_exchange_bytes(cfg, schedule, num_frames, height, width, ranks, item, chunk_size)) / frames
    return ParallelPrediction(ranks, flops, sent, flops / peak_flops, sent / link_bytes_per_s)
