"""What a stream hands back: per-chunk results, a whole video's, and the bookkeeping of frames per chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..model.decoder import VAE_TIME_STRIDE


def chunk_video_frames(chunk: int, chunk_size: int) -> int:
    """Video frames a chunk decodes to: 4 per latent frame, except the very first latent frame (1)."""
    return VAE_TIME_STRIDE * chunk_size - (VAE_TIME_STRIDE - 1 if chunk == 0 else 0)


@dataclass
class PromptSwitch:
    """A prompt switch as the chunk after it reports it."""

    recache: bool  # whether the attended frames were re-encoded under the new prompt
    forwards: dict[str, int]  # extra t=0 forwards the re-cache ran, per resolution
    seconds: float  # wall time of the switch: the new text K/V, plus the re-cache


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
    latent_bytes: int = 0  # bytes of the clean latents kept for the ring's frames (what a prompt re-cache reads)
    prompt_switch: PromptSwitch | None = None  # a prompt switch that landed just before this chunk, with its cost
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
