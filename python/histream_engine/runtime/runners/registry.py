"""Who runs a chunk's DiT forwards, registered in one explicit list: torch (the model itself), or exported graphs
through ONNX Runtime or TensorRT.

``EngineConfig(dit=...)`` picks one by name; ``dit_backends()`` lists them with the reason one cannot run here.
The graph runners live in ``histream_engine.graphs`` (export and run side by side); this registry reaches them by
module name only when one is built, the way the attention registry reaches its backends, so the runtime never
imports that room and a runner whose dependency is missing is never imported.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch


def _missing(package: str, install: str) -> str | None:
    return f"{package} is not installed ({install})" if importlib.util.find_spec(package) is None else None


def _onnxruntime_reason() -> str | None:
    return _missing("onnxruntime", "pip install onnxruntime, or onnxruntime-gpu for CUDA")


def _tensorrt_reason() -> str | None:
    if why := _missing("tensorrt", "pip install tensorrt; it needs an NVIDIA GPU and driver"):
        return "TensorRT " + why.split(" ", 1)[1]
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU, and none is visible"
    return None


@dataclass(frozen=True)
class RunnerEntry:
    name: str
    unavailable_reason: Callable[[], str | None]  # None when usable, else why not (missing package, no GPU)
    module: str  # where its factory lives, relative to histream_engine
    factory: str  # factory(dit, backend, ops, engine_dir, parallel) -> the runner
    needs_engine_dir: bool  # graph runners read an export (or build-trt) folder
    exported_graphs: bool  # runs fixed graphs: no cuda_graphs / compile / parallel of our own


RUNNERS = (
    RunnerEntry("torch", lambda: None, ".runtime.runners.torch_runner", "torch_forwards", False, False),
    RunnerEntry("onnxruntime", _onnxruntime_reason, ".graphs.runners", "onnxruntime_forwards", True, True),
    RunnerEntry("tensorrt", _tensorrt_reason, ".graphs.runners", "tensorrt_forwards", True, True),
)
DIT_RUNNERS = tuple(e.name for e in RUNNERS)
_BY_NAME = {e.name: e for e in RUNNERS}
REASONS: dict[str, Callable[[], str | None]] = {e.name: e.unavailable_reason for e in RUNNERS}


def runner_entry(name: str) -> RunnerEntry:
    if name not in _BY_NAME:
        raise ValueError(f"unknown dit runner {name!r}; choose one of {DIT_RUNNERS}")
    return _BY_NAME[name]


def dit_backends() -> list[tuple[str, bool, str]]:
    """Every DiT runner as (name, available, reason); reason is "" when available."""
    return [(e.name, (why := e.unavailable_reason()) is None, why or "") for e in RUNNERS]


def build_runner(name: str, dit, backend, ops, engine_dir, parallel=None):
    """The runner ``name``, refusing with the reason when it cannot run here. ``parallel``: the ``ParallelGroup`` a
    sequence-parallel engine shards its forwards over (the torch runner only: exported graphs are whole-model)."""
    entry = runner_entry(name)
    if (why := entry.unavailable_reason()) is not None:
        raise RuntimeError(f"dit={name!r} is unavailable: {why}")
    if parallel is not None and entry.exported_graphs:
        raise ValueError(f"dit={name!r} runs exported whole-model graphs, one process each; parallel='ulysses' runs dit='torch'")
    if entry.needs_engine_dir and engine_dir is None:
        raise ValueError(f"dit={name!r} needs engine_dir: the folder histream export (or histream build-trt) wrote")
    package = __package__.split(".")[0]  # histream_engine
    factory = getattr(importlib.import_module(entry.module, package), entry.factory)
    return factory(dit, backend, ops, engine_dir, parallel)
