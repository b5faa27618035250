"""The uncached reference of a chunk that starts from given clean frames: a prompt switch's re-cache
(tests/runtime/test_live.py), a resumed state, an image or a clip as context (tests/runtime/test_context.py)."""

import torch
import torch.nn.functional as F

from histream_engine.runtime.denoise.sampling import renoise, sigma_of, x0_from_flow


def reference_chunk(model, ctx, sched, given, chunk, noises, chunk_size, noisy_from=0, ntk=None):
    """The x0 of chunk ``chunk``'s noisy frames ``[noisy_from, M)``: each step the uncached whole-sequence forward over
    [``given`` at t=0: the frames the chunk attends, or its own first frames] + [its noisy frames], ``block_causal=M``,
    under the prompt ``ctx``. ``noises``: the chunk's M-frame draws per step (frames before ``noisy_from`` unused);
    ``ntk``: resolution -> NTK scale, or None for none."""
    r = sched.low_factor
    clean = {"high": given, "low": F.avg_pool3d(given, (1, r, r))}
    n = given.shape[2]
    x0, prev = None, None
    for step, eps in zip(sched.steps(chunk), noises):
        eps = eps[:, :, noisy_from:]
        sigma = sigma_of(step.timestep)
        if x0 is None:
            x = eps
        else:
            base = x0 if step.resolution == prev else F.interpolate(x0, scale_factor=(1, r, r), mode="trilinear")
            x = renoise(base, eps, sigma)
        seq = torch.cat([clean[step.resolution], x], dim=2)
        t = torch.zeros(x.shape[0], seq.shape[2], device=seq.device)
        t[:, n:] = step.timestep
        scale = (1.0, 1.0, 1.0) if ntk is None else ntk[step.resolution]
        flow = model(seq, t, ctx, block_causal=chunk_size, ntk_scale=scale)[:, :, n:]
        x0, prev = x0_from_flow(x, flow, sigma), step.resolution
    return x0
