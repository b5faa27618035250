"""Where a steady-state chunk's time goes: a ``torch.profiler`` run over one late chunk of a video.

Ops are ranked by their own (self) time on the device that did the work: CUDA kernel time on a GPU, CPU
time otherwise. The profiled chunk is the video's last, so on a GPU with ``--cuda-graphs`` it is a replay
and the table shows the graph's kernels.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from histream_engine.runtime.denoise.schedules import resolve_schedule

TOP_OPS = 20


def profile_last_chunk(engine, prompt, frames: int, height: int, width: int, schedule: str) -> dict:
    """Profile the last chunk of one video; returns the ranked ops and the profiler's text table."""
    cuda = engine.dit.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    chunks = engine.stream(prompt, frames, height, width, schedule=schedule)
    num_chunks = engine.video_shape(prompt, frames, height, width, resolve_schedule(schedule)).num_chunks
    for _ in range(num_chunks - 1):
        next(chunks)
    with profile(activities=activities) as prof:
        last = list(chunks)[-1]  # with a VAE on a GPU the last decode is inside the window too
        if cuda:
            torch.cuda.synchronize()
    # Self times, so nested ops (linear -> addmm) are not counted twice; device time when there is a device.
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return {
        "chunk": last.index,
        "run_mode": last.run_mode,
        "clock": "CUDA kernels" if cuda else "CPU",
        "total_seconds": total / 1e6,
        "ops": [
            {"name": e.key, "self_seconds": getattr(e, key) / 1e6, "share": getattr(e, key) / total, "calls": e.count}
            for e in events[:TOP_OPS]
        ],
        "table": prof.key_averages().table(sort_by=key, row_limit=TOP_OPS),
    }

