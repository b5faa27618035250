"""``attention="auto"``: time every available attention core on the first call with a new shape, then use the fastest.

Choices are kept for the process (``AUTO_CHOICES``), so a second engine, or a second video, does not measure
again. Each measurement is logged (logger ``histream_engine``) and can be read back for a report
(``auto_choices()``). The pre-pass is common to every core, so only the cores are timed.

A CUDA graph cannot time anything while it captures; the engine runs a chunk eagerly before capturing a
chunk of the same shapes, so choices exist by then, and a capture that meets an unmeasured shape is refused.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from ..device_timing import device_seconds
from . import reference
from .torch_ref import TorchAttention

log = logging.getLogger("histream_engine")

Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

WARMUP, REPEATS = 1, 3


@dataclass
class AutoChoice:
    core: str
    seconds: dict[str, float]  # median seconds per call of each core that ran
    failed: dict[str, str]  # cores that raised, with their message
    unavailable: dict[str, str]  # cores not tried, with the reason


AUTO_CHOICES: dict[tuple, AutoChoice] = {}


def auto_choices() -> dict[str, dict]:
    """Every choice made in this process, keyed by a readable shape: for reports and logs."""
    return {shape_name(key): vars(choice) for key, choice in AUTO_CHOICES.items()}


def shape_name(key: tuple) -> str:
    q, k, k_strides, _v_strides, dtype, device = key
    return f"q{list(q)} k{list(k)} k strides {list(k_strides)} {str(dtype).replace('torch.', '')} {device}"


class AutoCore:
    """A core that dispatches to the fastest of ``cores`` measured for each input shape."""

    name = "auto"

    def __init__(self, cores: dict[str, Core], unavailable: dict[str, str]):
        if not cores:
            raise ValueError("auto needs at least one available core")
        self.cores = cores
        self.unavailable = unavailable

    def choose(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AutoChoice:
        # K and V strides are part of the shape: K read from the ring and from scratch are different problems.
        key = (tuple(q.shape), tuple(k.shape), k.stride(), v.stride(), q.dtype, q.device.type)
        choice = AUTO_CHOICES.get(key)
        if choice is not None:
            return choice
        if q.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"attention='auto' met the unmeasured shape {shape_name(key)} inside a CUDA graph capture; "
                               "run one chunk of that shape eagerly first (the engine does), or pick a backend by name")
        seconds, failed = {}, {}
        for name, core in self.cores.items():
            try:
                times = device_seconds(lambda core=core: core(q, k, v), q.device, WARMUP, REPEATS)
                seconds[name] = statistics.median(times)
            except Exception as e:  # noqa: BLE001 - a core that cannot run this shape is skipped, and the reason kept
                failed[name] = f"{type(e).__name__}: {e}"
        if not seconds:
            raise RuntimeError(f"attention='auto': no core could run {shape_name(key)}: {failed}")
        best = min(seconds, key=seconds.get)
        choice = AUTO_CHOICES[key] = AutoChoice(best, seconds, failed, dict(self.unavailable))
        timings = ", ".join(f"{n} {s * 1e3:.3f} ms" for n, s in seconds.items())
        skipped = "".join(f"; {n}: {why}" for n, why in {**failed, **self.unavailable}.items())
        log.info("attention auto: %s -> %s (%s%s)", shape_name(key), best, timings, skipped)
        return choice

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.cores[self.choose(q, k, v).core](q, k, v)


class ReferenceFallback:
    """``auto`` where no core can run (no GPU, no Triton): the torch reference's functions and capabilities (both ring
    dtypes), saying why once."""

    name = TorchAttention.name
    capabilities = TorchAttention.capabilities
    self_attention = staticmethod(reference.self_attention)
    cross_attention = staticmethod(reference.cross_attention)
    write_kv = staticmethod(reference.write_kv)
    ring_attention = staticmethod(reference.ring_attention)
    downsample_patches = staticmethod(reference.downsample_patches)

    def __init__(self, reason: str):
        self.reason = f"{reason}: using the torch reference"
        log.info("attention auto: %s", self.reason)
