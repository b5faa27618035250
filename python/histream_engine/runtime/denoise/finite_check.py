"""A chunk's latents checked for NaN/Inf once it is done: one reduction and one host sync per chunk, outside any
CUDA-graph replay, so a model or kernel that went non-finite fails loudly instead of decoding to a black video."""

from __future__ import annotations

import torch


class NonFiniteLatents(RuntimeError):
    pass


def check_finite_latents(x0: torch.Tensor, chunk: int, steps) -> None:
    """``x0`` ``[B, 16, M, h, w]``: the chunk's final latents, after all of its ``steps``."""
    if not bool(torch.isfinite(x0).all()):
        last = steps[-1]
        raise NonFiniteLatents(
            f"chunk {chunk}: the latents hold NaN or Inf after step {len(steps)}/{len(steps)} ({last.resolution} res, "
            f"t={last.timestep:.1f}); the model, its weights or the attention backend produced non-finite values "
            "(try dtype float32 or attention 'torch')"
        )
