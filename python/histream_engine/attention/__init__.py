"""Attention backends behind one interface (``protocol.AttentionBackend``), registered in one explicit list.

Each entry says how to check availability, with a human-readable reason, and how to build the backend;
a backend whose dependency is missing is never imported. A built backend states what it reads and how it computes in
its ``capabilities`` (``protocol.Capabilities``); the backends share the plain torch pieces (``reference``) rather
than inherit from one another.

- ``torch``: plain torch, the baseline every kernel is tested against (rotate, SDPA over slices of the ring).
- ``triton``, ``cudnn``, ``flash_attn`` (FlashAttention-3 or -2): the Triton RoPE pre-pass, then that attention core
  (``prepass_backend``, ``cores``).
- ``cuda``: the same path compiled ahead of time (``histream_engine._C`` from ``csrc/``): pre-pass, recache write,
  downsample and an mma.sync attention core, with no Triton and no JIT at run time.
- ``torch_fp8``, ``triton_fp8``: attention over an e4m3 ring with an FP8 core (``fp8``): its torch model (any device)
  and the Triton kernels (sm_90a; the CPU interpreter for tests). Both read an e4m3 ring only: the engine refuses them
  without ``EngineConfig(kv_dtype="float8_e4m3fn")``, as it refuses an e4m3 ring to the model-dtype cores.
- ``auto``: the pre-pass, then whichever available core measured fastest for the shape (``auto``); the
  torch reference where no core can run.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from ..plugins import Plugin, Registry, missing_package
from .protocol import AttentionBackend


def _missing(package: str) -> str | None:
    return missing_package(package, f"pip install {package}")


def _triton_reason() -> str | None:
    if reason := _missing("triton"):
        return reason
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA GPU is visible (TRITON_INTERPRET=1 runs the kernels in Triton's CPU interpreter, for testing only)"
    return None


def _cudnn_reason() -> str | None:
    if reason := _triton_reason():  # the RoPE pre-pass in front of the core is a Triton kernel
        return reason
    if not torch.cuda.is_available():
        return None  # the CPU interpreter: SDPA's CPU kernel stands in for cuDNN (tests only)
    if not torch.backends.cudnn.is_available():
        return "this torch build has no cuDNN"
    if not torch.backends.cuda.cudnn_sdp_enabled():
        return "cuDNN attention is disabled in this process (torch.backends.cuda.enable_cudnn_sdp(True) turns it on)"
    return None


def _flash_reason() -> str | None:
    if _missing("flash_attn_interface") and _missing("flash_attn"):
        return "neither FlashAttention-3 (flash_attn_interface) nor FlashAttention-2 (pip install flash_attn) is installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return _triton_reason()


def _cuda_reason() -> str | None:
    from ..native import unavailable_reason

    return unavailable_reason()


def _build_torch():
    from .torch_ref import TorchAttention

    return TorchAttention()


def _build_torch_fp8():
    from .fp8 import TorchFp8Attention

    return TorchFp8Attention()


def _build_triton_fp8():
    from .fp8 import TritonFp8Attention

    return TritonFp8Attention()


def _prepass(name: str, unavailable_reason: Callable[[], str | None], core: str, ops: str = "triton_ops") -> Plugin:
    """A pre-pass backend; its traits name its core's function in ``cores``, what ``auto`` chooses among."""
    def build():
        from . import cores, prepass_backend

        return prepass_backend.PrepassAttention(name, getattr(cores, core), getattr(prepass_backend, ops)())

    return Plugin(name, unavailable_reason, build, core)


def _build_auto():
    """The pre-pass with the fastest measured core; the torch reference when no core can run here. The pre-pass
    kernels are Triton's where Triton runs, else the compiled ones."""
    from . import cores
    from .auto import AutoCore, ReferenceFallback
    from .prepass_backend import PrepassAttention, cuda_ops, triton_ops

    available, unavailable = {}, {}
    for entry in BACKENDS.entries:
        if entry.traits is not None:
            reason = entry.unavailable_reason()
            if reason is None:
                available[entry.name] = getattr(cores, entry.traits)
            else:
                unavailable[entry.name] = reason
    if not available:
        return ReferenceFallback("no attention core can run here (" + "; ".join(f"{n}: {r}" for n, r in unavailable.items()) + ")")
    ops = triton_ops() if _triton_reason() is None else cuda_ops()
    return PrepassAttention("auto", AutoCore(available, unavailable), ops)


BACKENDS: Registry[AttentionBackend] = Registry("attention backend", (
    Plugin("torch", lambda: None, _build_torch),
    _prepass("triton", _triton_reason, "triton_core"),
    _prepass("cuda", _cuda_reason, "cuda_core", ops="cuda_ops"),
    _prepass("cudnn", _cudnn_reason, "cudnn_core"),
    _prepass("flash_attn", _flash_reason, "flash_core"),
    Plugin("torch_fp8", lambda: None, _build_torch_fp8),
    Plugin("triton_fp8", _triton_reason, _build_triton_fp8),
    Plugin("auto", lambda: None, _build_auto),
))


def attention_backends() -> list[tuple[str, bool, str]]:
    """Every registered backend as (name, available, reason); reason is "" when available."""
    return BACKENDS.listing()


def get_backend(name: str) -> AttentionBackend:
    return BACKENDS.build(name)
