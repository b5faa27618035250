"""Where a result came from: the checkout's commit and the software and device a record was measured on. Every
recorded benchmark, export manifest and GPU-suite record carries this header."""

from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from .optional import optional_module

HERE = Path(__file__).resolve().parent


def package_version() -> str:
    try:
        return metadata.version("histream_engine")
    except metadata.PackageNotFoundError:
        return "0+unknown"  # run from a source tree that was never installed


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit checked out at ``path`` (default: this package's own checkout), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10,
                             cwd=path or HERE)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    """The header of a benchmark record: device, software versions, commit and date."""
    triton = optional_module("triton")
    triton_version = triton.__version__ if triton is not None else None
    return {
        "device": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
