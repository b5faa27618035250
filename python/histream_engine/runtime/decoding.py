"""Decoding finished chunks to frames. On a GPU the VAE runs on its own CUDA stream, so decoding chunk k
overlaps denoising chunk k+1; each result is then released one chunk late, once its decode is done."""

from __future__ import annotations

import contextlib
import time

import torch

from ..model.decoder import VideoDecoder
from ..model.vae import to_uint8_frames


class ChunkDecoder:
    def __init__(self, vae: VideoDecoder, device: torch.device, lag: bool | None = None, state=None):
        self.vae = vae
        self.state = vae.new_state() if state is None else state  # the causal history, carried from chunk to chunk
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.lag = self.stream is not None if lag is None else lag
        self._pending: list[tuple] = []

    def submit(self, result) -> list:
        """Start decoding ``result.latents``; returns the results whose frames are ready, in order."""
        x0 = result.latents  # [B, 16, M, h, w]
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(x0.device))  # x0 is complete before the VAE reads it
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            context = torch.cuda.stream(self.stream)
        else:
            start = end = None
            context = contextlib.nullcontext()
        with context:
            t0 = time.perf_counter()
            if start is not None:
                start.record()
            frames = to_uint8_frames(self.vae.decode(x0, self.state))  # [B, T, H, W, 3]
            if end is not None:
                end.record()
                x0.record_stream(self.stream)
        self._pending.append((result, frames, start, end, time.perf_counter() - t0))
        return self._release(keep=1 if self.lag else 0)

    def flush(self) -> list:
        return self._release(keep=0)

    @property
    def pending(self) -> int:
        """Chunks submitted whose decode has not been handed out yet (one at most, and only with the lag)."""
        return len(self._pending)

    def _release(self, keep: int) -> list:
        ready = []
        while len(self._pending) > keep:
            result, frames, start, end, host_seconds = self._pending.pop(0)
            if end is not None:
                end.synchronize()
                result.vae_seconds = start.elapsed_time(end) / 1e3
            else:
                result.vae_seconds = host_seconds
            result.frames = frames
            ready.append(result)
        return ready
