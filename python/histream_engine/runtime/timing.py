"""Per-chunk wall time: CUDA events on a GPU (no host sync until the chunk's end), a monotonic clock elsewhere."""

from __future__ import annotations

import time

import torch


class ChunkTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Seconds since ``start``; on a GPU this waits for the chunk's queued work, once, at its end."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return self._start.elapsed_time(end) / 1e3
        return time.perf_counter() - self._t0
