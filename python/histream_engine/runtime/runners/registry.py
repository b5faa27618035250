"""Who runs a chunk's DiT forwards, registered in one explicit list: torch (the model itself, sharded over ranks with
``parallel="ulysses"``), or exported graphs through ONNX Runtime or TensorRT.

``EngineConfig(dit=...)`` picks one by name; ``dit_backends()`` lists them with the reason one cannot run here. The
graph runners live in ``histream_engine.graphs`` (export and run side by side); this registry reaches them by module
name only when one is built, the way the attention registry reaches its backends, so the runtime never imports that
room and a runner whose dependency is missing is never imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from ...plugins import Plugin, Registry, missing_package


@dataclass(frozen=True)
class RunnerTraits:
    needs_engine_dir: bool  # graph runners read an export (or build-trt) folder
    exported_graphs: bool  # runs fixed graphs: no cuda_graphs / compile / parallel of our own


def _tensorrt_reason() -> str | None:
    if why := missing_package("tensorrt", "pip install tensorrt; it needs an NVIDIA GPU and driver"):
        return why
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU, and none is visible"
    return None


def _torch_runner(dit, backend, ops, engine_dir, parallel=None):
    """The model's forwards; sharded over ``parallel``'s ranks (``parallel.ulysses.UlyssesRunner``) when given."""
    if parallel is None:
        from .torch_runner import TorchRunner

        return TorchRunner(dit, backend, ops)
    from ..parallel.ulysses import UlyssesRunner

    return UlyssesRunner(dit, backend, ops, parallel)


def _graph_runner(factory: str):
    """A graph runner's factory in ``histream_engine.graphs.runners``, reached by name (see the module docstring)."""
    def build(*args):
        package = __package__.split(".")[0]  # histream_engine
        return getattr(importlib.import_module(".graphs.runners", package), factory)(*args)

    return build


RUNNERS: Registry = Registry("dit runner", (
    Plugin("torch", lambda: None, _torch_runner, RunnerTraits(False, False)),
    Plugin("onnxruntime", lambda: missing_package("onnxruntime", "pip install onnxruntime, or onnxruntime-gpu for CUDA"),
           _graph_runner("onnxruntime_forwards"), RunnerTraits(True, True)),
    Plugin("tensorrt", _tensorrt_reason, _graph_runner("tensorrt_forwards"), RunnerTraits(True, True)),
), field="dit")
DIT_RUNNERS = RUNNERS.names


def runner_traits(name: str) -> RunnerTraits:
    return RUNNERS.entry(name).traits


def dit_backends() -> list[tuple[str, bool, str]]:
    """Every DiT runner as (name, available, reason); reason is "" when available."""
    return RUNNERS.listing()


def build_runner(name: str, dit, backend, ops, engine_dir, parallel=None):
    """The runner ``name``, refusing with the reason when it cannot run here. ``parallel``: the ``ParallelGroup`` a
    sequence-parallel engine shards its forwards over (the torch runner only: exported graphs are whole-model)."""
    traits = runner_traits(name)
    if parallel is not None and traits.exported_graphs:
        raise ValueError(f"dit={name!r} runs exported whole-model graphs, one process each; parallel='ulysses' runs dit='torch'")
    if traits.needs_engine_dir and engine_dir is None:
        raise ValueError(f"dit={name!r} needs engine_dir: the folder histream export (or histream build-trt) wrote")
    return RUNNERS.build(name, dit, backend, ops, engine_dir, parallel)
