"""Device time, measured one way everywhere: CUDA events on a GPU (no host sync until the end of what is timed), a
monotonic clock elsewhere. The engine's per-chunk seconds, ``auto``'s core choice and the benchmarks all read it."""

from __future__ import annotations

import time
from typing import Callable

import torch


class DeviceTimer:
    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Seconds since ``start``; on a GPU this waits for the queued work, once, at its end."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return self._start.elapsed_time(end) / 1e3
        return time.perf_counter() - self._t0


def device_seconds(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    timer, times = DeviceTimer(device), []
    for _ in range(repeats):
        timer.start()
        fn()
        times.append(timer.stop())
    return times
