"""The paper's Wan2.1 baseline: diffusers' bidirectional WanTransformer3DModel over the whole video.

Timed on the same random weights for a few full-sequence steps; its per-frame latency is then that step
time x 50 steps x 2 (classifier-free guidance) / frames, as the paper reports it.
"""

from __future__ import annotations

import statistics

import torch

from histream_engine.model.keys import wan_to_diffusers
from histream_engine.device_timing import DeviceTimer
from histream_engine.optional import OptionalDependencyError, require

STEPS = 50
CFG = 2


def wan_baseline(dit, prompt, latent_shape: tuple[int, int, int], frames: int, steps: int) -> dict:
    """Seconds per video frame of 50-step CFG bidirectional sampling, from ``steps`` timed forwards."""
    try:
        WanTransformer3DModel = require("diffusers", "bench", "the Wan2.1 baseline", "WanTransformer3DModel")
    except OptionalDependencyError as e:
        return {"skipped": str(e)}
    cfg = {k: v for k, v in dit.config.to_diffusers_json().items() if not k.startswith("_")}
    # Built on the real device: its RoPE tables are non-persistent buffers made at construction.
    with torch.device(dit.device):
        ref = WanTransformer3DModel(**cfg)
    ref.load_state_dict(wan_to_diffusers(dit.state_dict()))
    if dit.dtype != torch.float32:
        ref = ref.to(dit.dtype)  # uniformly: a timing baseline, and diffusers' fp32 islands would mismatch our casts
    ref = ref.eval().requires_grad_(False)
    prompt = prompt.to(dit.device, dit.dtype)
    F, h, w = latent_shape
    x = torch.randn(1, dit.config.in_dim, F, h, w, device=dit.device, dtype=dit.dtype)  # [1, 16, F, h, w]
    t = torch.full((1,), 500.0, device=dit.device)
    timer = DeviceTimer(dit.device)
    times = []
    with torch.no_grad():
        ref(x, t, prompt, return_dict=False)  # warm-up
        for _ in range(steps):
            timer.start()
            ref(x, t, prompt, return_dict=False)
            times.append(timer.stop())
    step = statistics.median(times)
    return {
        "step_seconds": step,
        "steps_timed": steps,
        "seconds_per_frame": step * STEPS * CFG / frames,
        "note": f"{STEPS} steps x {CFG} (CFG) full-sequence forwards over {F} latent frames, per output frame",
    }
