"""The CUDA kernels compiled ahead of time (``csrc/`` -> ``histream_engine._C``) and their checked launchers (``ops``).

The extension is built by ``pip install`` wherever nvcc is found (``setup.py``, ``CMakeLists.txt``) and needs no
Triton and no JIT at run time. Nothing here imports it or touches a GPU until asked.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

MIN_CAPABILITY = (8, 0)  # mma.sync m16n8k16, ldmatrix and cp.async


def extension():
    """The compiled module; raises ImportError with what to do when it was not built."""
    try:
        return importlib.import_module("histream_engine._C")
    except ImportError as e:
        if importlib.util.find_spec("histream_engine._C") is not None:  # built, and its own load failed: that is the error
            raise ImportError(f"histream_engine._C is built but does not load: {e}") from e
        raise ImportError(
            f"histream_engine._C was not built ({e}): reinstall with nvcc and cmake on PATH (pip install -e .), "
            "without HISTREAM_SKIP_CUDA_BUILD=1") from e


def built_reason() -> str | None:
    """None when the extension imports, else why not."""
    try:
        extension()
    except ImportError as e:
        return str(e)
    return None


def unavailable_reason() -> str | None:
    """None when the CUDA kernels can run here, else the reason (not built, no GPU, GPU too old)."""
    if reason := built_reason():
        return reason
    archs = extension().cuda_archs
    if not torch.cuda.is_available():
        return f"histream_engine._C is built (for sm {archs}) but no CUDA GPU is visible"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        return (f"histream_engine._C needs a GPU of compute capability 8.0 or newer; "
                f"{torch.cuda.get_device_name()} is {capability[0]}.{capability[1]}")
    return None
