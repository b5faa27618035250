"""What a request will hold at its peak, and a refusal, with the figure and the limit, when that cannot fit.

The estimate counts what grows with the request: the K/V caches the stream preallocates (exact, as RingKVCache
allocates them), one DiT forward's activations at the high resolution (the float32 residual stream, q/k/v/out and
the FFN's hidden layer, and on a CPU the attention scores SDPA's masked path materializes for one layer), and one
VAE decode step (the decoder runs a latent frame at a time: 4 video frames at full resolution in its widest
full-resolution stage, with its input, output and causal history). Weights are not counted: they are loaded already.
The limit is the memory available now: ``MemAvailable`` on a CPU, ``torch.cuda.mem_get_info``'s free bytes on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.decoder import VAE_SPACE_STRIDE
from .request_checks import RequestError

GiB = 2**30
# conv input, output, residual, causal history and the upsampler's doubled frames at the widest full-resolution stage
VAE_LIVE_TENSORS = 6
# Transient buffers are freed and allocated again every forward, and the heap fragments: measured on the tiny model
# at 512x512, 21 frames, on a CPU (tests/errors/test_memory_estimate.py), peak RSS grew by 852-903 MiB across runs
# where the transients summed to 841 MiB (the caches 8 MiB); this headroom keeps the estimate above the measured peak.
TRANSIENT_HEADROOM = 1.25


@dataclass(frozen=True)
class MemoryEstimate:
    cache_bytes: int
    activation_bytes: int
    vae_bytes: int

    @property
    def total(self) -> int:
        return self.cache_bytes + self.activation_bytes + self.vae_bytes

    def describe(self) -> str:
        return (f"{self.total / GiB:.2f} GiB (K/V caches {self.cache_bytes / GiB:.2f}, DiT activations "
                f"{self.activation_bytes / GiB:.2f}, VAE decode {self.vae_bytes / GiB:.2f})")


def estimate_stream(dit_config, dtype: torch.dtype, device: torch.device, batch: int, chunk_size: int,
                    latent_hw: tuple[int, int], low_factor: int | None, slots: int, vae_dim: int | None,
                    shards: int = 1) -> MemoryEstimate:
    """``latent_hw`` at the high resolution; ``low_factor`` None when the schedule keeps no low-res cache; ``slots``
    the frame slots each cache preallocates (``WindowPlan.slots``); ``shards`` the ranks of a sequence-parallel group,
    over which the caches (by head) and the token-wise activations (by token) are dealt out."""
    cfg, item = dit_config, torch.empty((), dtype=dtype).element_size()
    ph, pw = cfg.patch_size[1:]

    def tokens_per_frame(factor: int) -> int:
        return (latent_hw[0] // factor // ph) * (latent_hw[1] // factor // pw)

    factors = [1] + ([low_factor] if low_factor else [])
    cache = sum(2 * cfg.num_layers * batch * slots * tokens_per_frame(f) * cfg.dim * item for f in factors) // shards
    queries = batch * chunk_size * tokens_per_frame(1)
    keys = (slots + chunk_size) * tokens_per_frame(1)
    activations = -(-queries // shards) * (4 * cfg.dim * 4 + 5 * cfg.dim * item + cfg.ffn_dim * item)
    if shards > 1:  # the exchanged Q, K, V and output of every token for this rank's heads
        activations += 2 * 4 * queries * (cfg.dim // shards) * item
    if device.type == "cpu":
        activations += 2 * batch * (cfg.num_heads // shards) * chunk_size * tokens_per_frame(1) * keys * 4
    vae = 0
    if vae_dim is not None:
        pixels = latent_hw[0] * VAE_SPACE_STRIDE * latent_hw[1] * VAE_SPACE_STRIDE
        vae = batch * VAE_LIVE_TENSORS * vae_dim * 4 * pixels * 4 + batch * 4 * chunk_size * pixels * 3
    return MemoryEstimate(cache, int(TRANSIENT_HEADROOM * activations), int(TRANSIENT_HEADROOM * vae))


def available_bytes(device: torch.device) -> tuple[int, str] | None:
    """(bytes, what they are), or None where this cannot be known (then nothing is refused)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free, f"free memory on {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024, "available RAM"
        except OSError:
            return None
    return None


def check_fits(estimate: MemoryEstimate, device: torch.device, what: str) -> None:
    limit = available_bytes(device)
    if limit is not None and estimate.total > limit[0]:
        raise RequestError(f"{what} needs about {estimate.describe()}, more than the {limit[0] / GiB:.2f} GiB of {limit[1]}; "
                           "ask for a smaller size, fewer frames or a sliding-window schedule")
