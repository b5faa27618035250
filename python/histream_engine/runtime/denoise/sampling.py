"""Flow-matching few-step sampling (Self-Forcing): warped timesteps, x0 from the flow, fresh-noise renoising."""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def warp_timesteps(steps, shift: float = 5.0) -> list[float]:
    """Map a step list on [0, 1000] through the flow-matching shift: sigma' = s*sigma / (1 + (s-1)*sigma)."""
    out = []
    for t in steps:
        if not 0 < t <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"timestep {t} is outside (0, {NUM_TRAIN_TIMESTEPS}]")
        sigma = t / NUM_TRAIN_TIMESTEPS
        out.append(NUM_TRAIN_TIMESTEPS * shift * sigma / (1 + (shift - 1) * sigma))
    return out


def sigma_of(t: float) -> float:
    return t / NUM_TRAIN_TIMESTEPS


def x0_from_flow(x_t: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """The model predicts v = noise - x0, and x_t = (1 - sigma) x0 + sigma noise, so x0 = x_t - sigma v."""
    return x_t - sigma * flow


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Noise a clean estimate to level sigma with fresh noise."""
    return (1 - sigma) * x0 + sigma * noise
