"""Given frames as a stream's context: an image becomes latent frame 0 of chunk 0, clean (t=0) beside the chunk's
noisy frames in the same forwards (per-frame timesteps, as CausVid does image-to-video on a causal model); a clip of
whole chunks becomes the stream's first chunks, written into the rings at t=0 the way a re-cache writes them, and
generation goes on after it (a stream resumed at the clip's end).

Frames are decoded pixels in [-1, 1], ``[3, H, W]`` (an image) or ``[3, T, H, W]`` (a clip), at the request's size;
they are encoded with the engine's VAE encoder (the Wan VAE's, or TAEHV's own).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.decoder import VAE_TIME_STRIDE
from .request_checks import RequestError, RequestTypeError


@dataclass(frozen=True)
class EncodedContext:
    latents: torch.Tensor  # [B, 16, n, h, w] DiT-space latents of the given frames
    image: bool  # one frame: clean frames inside chunk 0; else whole chunks, generation starting after them
    chunks: int  # whole chunks the context fills (0 for an image)


def clip_frames(chunks: int, chunk_size: int) -> int:
    """Video frames in ``chunks`` whole chunks: 4M - 3 for the first, 4M for each further one."""
    return VAE_TIME_STRIDE * chunk_size * chunks - (VAE_TIME_STRIDE - 1)


def check_context(context, height: int, width: int, chunk_size: int) -> tuple[torch.Tensor, bool]:
    """The frames as a ``[1, 3, T, H, W]`` video and whether they are one image; refused with the sizes named."""
    if not isinstance(context, torch.Tensor):
        raise RequestTypeError(f"context must be a torch.Tensor, an image [3, H, W] or a clip [3, T, H, W], got {type(context).__name__}")
    if context.dim() not in (3, 4) or context.shape[0] != 3:
        raise RequestError(f"context must be an image [3, H, W] or a clip [3, T, H, W] (RGB first), got shape {tuple(context.shape)}")
    if not context.is_floating_point() or context.layout != torch.strided or context.device.type == "meta":
        raise RequestError(f"context must be a dense floating tensor of pixels in [-1, 1], got {context.dtype} {context.layout}")
    image = context.dim() == 3
    video = context[:, None] if image else context  # [3, T, H, W]
    if tuple(video.shape[-2:]) != (height, width):
        raise RequestError(f"the context frames are {video.shape[-1]}x{video.shape[-2]} but the request is {width}x{height}: "
                           "resize them to the request's size")
    T = video.shape[1]
    if not image and (T + VAE_TIME_STRIDE - 1) % (VAE_TIME_STRIDE * chunk_size):
        ok = [clip_frames(j, chunk_size) for j in range(1, 5)]
        raise RequestError(f"a clip of {T} frames is not a whole number of chunks: a clip must have {ok[0]}, {ok[1]}, "
                           f"{ok[2]}, ... frames (4 * {chunk_size} * j - 3), or give one image [3, H, W]")
    if not bool(torch.isfinite(video).all()):
        raise RequestError("the context frames hold NaN or Inf values")
    low, high = float(video.min()), float(video.max())
    if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
        raise RequestError(f"context pixels must be in [-1, 1] (decoded frames, 2 * uint8 / 255 - 1), got values in "
                           f"[{low:.3g}, {high:.3g}]")
    return video[None].clamp(-1.0, 1.0), image


def encode_context(vae, context, batch: int, height: int, width: int, chunk_size: int) -> EncodedContext:
    """``context`` checked and encoded with ``vae``'s encoder, broadcast over the stream's ``batch``."""
    video, image = check_context(context, height, width, chunk_size)
    if vae is None:
        raise RequestError("context frames are encoded with the engine's VAE, and this engine has none: build it with a "
                           "VAE loaded with its encoder (load_vae(..., encoder=True))")
    if not getattr(vae, "has_encoder", False):
        raise RequestError(f"this engine's decoder ({vae.name}) was loaded without its encoder, which context frames need: "
                           f"load it with {'load_taehv' if vae.name == 'taehv' else 'load_vae'}(..., encoder=True)")
    latents = vae.encode(video.to(vae.device, vae.dtype)).float()  # [1, 16, n, h, w]
    latents = latents.expand(batch, *latents.shape[1:]).contiguous()
    return EncodedContext(latents, image, 0 if image else latents.shape[2] // chunk_size)
