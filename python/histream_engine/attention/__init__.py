"""Attention backends behind one interface (see ``torch_ref``), registered in one explicit list.

Each entry says how to check availability, with a human-readable reason, and how to build the backend;
a backend whose dependency is missing is never imported.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class BackendEntry:
    name: str
    # Returns None when usable, else the reason it is not (missing package, no GPU).
    unavailable_reason: Callable[[], str | None]
    build: Callable[[], object]


def _missing(package: str) -> str | None:
    if importlib.util.find_spec(package) is None:
        return f"the {package} package is not installed (pip install {package})"
    return None


def _triton_reason() -> str | None:
    if reason := _missing("triton"):
        return reason
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA GPU is visible (TRITON_INTERPRET=1 runs the kernels in Triton's CPU interpreter, for testing only)"
    return None


def _flash_reason() -> str | None:
    if reason := _missing("flash_attn"):
        return reason
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def _build_torch():
    from .torch_ref import TorchAttention

    return TorchAttention()


def _build_triton():
    from .triton_backend import TritonAttention

    return TritonAttention()


def _build_flash():
    from .flash_backend import FlashAttention

    return FlashAttention()


BACKENDS: tuple[BackendEntry, ...] = (
    BackendEntry("torch", lambda: None, _build_torch),
    BackendEntry("triton", _triton_reason, _build_triton),
    BackendEntry("flash_attn", _flash_reason, _build_flash),
)


def attention_backends() -> list[tuple[str, bool, str]]:
    """Every registered backend as (name, available, reason); reason is "" when available."""
    out = []
    for entry in BACKENDS:
        reason = entry.unavailable_reason()
        out.append((entry.name, reason is None, reason or ""))
    return out


def get_backend(name: str):
    for entry in BACKENDS:
        if entry.name == name:
            reason = entry.unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"attention backend {name!r} is unavailable: {reason}")
            return entry.build()
    raise ValueError(f"unknown attention backend {name!r}; registered: {[e.name for e in BACKENDS]}")
