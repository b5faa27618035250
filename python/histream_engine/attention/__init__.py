"""Attention backends behind one interface, registered in one explicit list.

A backend provides ``self_attention(q, k, v, q_rope, k_rope, mask)`` and ``cross_attention(q, k, v, mask)``.
Each registry entry says how to check availability (with a human-readable reason) and how to build the
backend; a backend whose dependency is missing is never imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BackendEntry:
    name: str
    # Returns None when usable, else the reason it is not (missing package, no GPU).
    unavailable_reason: Callable[[], str | None]
    build: Callable[[], object]


def _torch_build():
    from .torch_ref import TorchAttention

    return TorchAttention()


BACKENDS: tuple[BackendEntry, ...] = (
    BackendEntry("torch", lambda: None, _torch_build),
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
