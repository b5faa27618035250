"""3D rotary position embedding (Wan layout) with per-axis NTK-aware frequency scaling.

The head dim is split into temporal / height / width parts (44/42/42 for head_dim 128); each part
rotates interleaved pairs ``(x[2j], x[2j+1])`` by ``position_axis * inv_freq_j``. Angles are computed
in float64 because positions times the lowest frequencies lose digits in float32.
"""

from __future__ import annotations

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) channel counts of one head, as Wan splits them."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def ntk_theta(theta: float, axis_dim: int, scale: float) -> float:
    """NTK-aware base for an axis of ``axis_dim`` channels stretched ``scale`` times: theta * s^(d/(d-2))."""
    if scale < 1.0:
        raise ValueError(f"NTK scale must be >= 1 (got {scale}); scale 1 is plain RoPE")
    if scale == 1.0:
        return theta
    return theta * scale ** (axis_dim / (axis_dim - 2))


def inv_freqs(head_dim: int, theta: float = 10000.0, ntk_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Per-pair inverse frequencies, float64 ``[head_dim // 2]``, ordered t pairs, h pairs, w pairs."""
    parts = []
    for d, s in zip(axis_dims(head_dim), ntk_scale):
        base = ntk_theta(theta, d, float(s))
        parts.append(1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    return torch.cat(parts)


def pair_axis(head_dim: int) -> torch.Tensor:
    """Which position axis (0=t, 1=h, 2=w) drives each rotation pair: ``[head_dim // 2]`` long."""
    dt, dh, dw = axis_dims(head_dim)
    return torch.cat([torch.full((d // 2,), a, dtype=torch.long) for a, d in enumerate((dt, dh, dw))])


def grid_positions(frames: torch.Tensor | range, height: int, width: int, device=None) -> torch.Tensor:
    """(frame, h, w) index of every token of a frame-major token grid: ``[len(frames) * height * width, 3]`` long."""
    f = torch.as_tensor(list(frames) if isinstance(frames, range) else frames, dtype=torch.long, device=device)
    h = torch.arange(height, device=device)
    w = torch.arange(width, device=device)
    grid = torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1)  # [F, h, w, 3]
    return grid.reshape(-1, 3)


def rope_cos_sin(positions: torch.Tensor, freqs: torch.Tensor, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every token's rotation angles: each ``[N, head_dim // 2]`` in ``dtype``.

    positions: ``[N, 3]`` integer (frame, h, w); freqs: ``[head_dim // 2]`` float64 from ``inv_freqs``.
    """
    axis = pair_axis(2 * freqs.numel()).to(positions.device)
    angles = positions[:, axis].to(torch.float64) * freqs.to(positions.device)  # [N, D/2]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` ``[B, N, H, D]`` by angles ``cos/sin`` ``[N, D/2]``; returns x's dtype.

    Computed in at least float32 so bf16 inputs are rotated before rounding, not after: one complex multiply
    of ``x[2i] + i x[2i+1]`` by ``cos + i sin``.
    """
    work = torch.promote_types(x.dtype, torch.float32)
    pairs = torch.view_as_complex(x.to(work).unflatten(-1, (-1, 2)))  # [B, N, H, D/2] complex
    turn = torch.complex(cos.to(work), sin.to(work))[None, :, None, :]  # [1, N, 1, D/2]
    return torch.view_as_real(pairs * turn).flatten(-2).to(x.dtype)


def rope_table(num_positions: int, freqs: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``p * freq_i`` for every position p < num_positions and pair i: each ``[NPOS, D/2]`` float32.

    Kernels index it with the token's position on the pair's own axis, so one table serves t, h and w.
    """
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * freqs.cpu()[None, :]  # [NPOS, D/2]
    return angles.cos().float().to(device), angles.sin().float().to(device)

