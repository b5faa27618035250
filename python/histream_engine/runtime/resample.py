"""Latent-space resolution changes for dual-resolution caching."""

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


def downsample_latents(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Area downsampling ``[B, C, F, H, W]`` -> ``[B, C, F, H/factor, W/factor]`` (mean of each factor x factor block)."""
    B, _, Fr, _, _ = x.shape
    return _images_as_frames(F.avg_pool2d(_frames_as_images(x), factor), B, Fr)
