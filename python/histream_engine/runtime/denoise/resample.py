"""Latent-space upsampling of the low-res x0 for dual-resolution caching.

The downsampling direction (low-res recache) is a backend op: ``downsample_patches``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _frames_as_images(x: torch.Tensor) -> torch.Tensor:
    B, C, Fr, H, W = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, H, W)  # [B*F, C, H, W]


def _images_as_frames(y: torch.Tensor, B: int, Fr: int) -> torch.Tensor:
    return y.reshape(B, Fr, *y.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, C, F, H, W]


def upsample_latents(x: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """``[B, C, F, h, w]`` -> ``[B, C, F, h*factor, w*factor]``, per frame, in latent space."""
    B, _, Fr, _, _ = x.shape
    extra = {} if mode == "nearest" else {"align_corners": False}
    y = F.interpolate(_frames_as_images(x), scale_factor=factor, mode=mode, **extra)
    return _images_as_frames(y, B, Fr)

