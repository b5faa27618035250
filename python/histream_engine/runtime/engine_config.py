"""An engine's settings: a frozen dataclass, checked whole when it is made. Change one with ``config.replace(...)``,
which checks the new config again; nothing edits a config after its checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .parallel.group import PARALLEL_MODES
from .request_checks import RequestTypeError, check_chunk_size
from .runners import precision as precision_rules
from .runners.registry import runner_traits


@dataclass(frozen=True)
class EngineConfig:
    chunk_size: int = 3  # latent frames per chunk (M)
    attention: str = "torch"  # attention backend name, see histream_engine.attention_backends()
    cuda_graphs: bool = False  # replay steady-state chunks as CUDA graphs (see runtime.denoise.chunk_graphs); CUDA only
    compile: bool = False  # torch.compile the blocks' elementwise parts (model.dit.BlockOps)
    dit: str = "torch"  # who runs the DiT forwards: torch, or exported graphs (onnxruntime, tensorrt); runtime.runners.registry lists them
    engine_dir: str | None = None  # for onnxruntime: a histream export folder; for tensorrt: a histream build-trt folder
    kv_dtype: str | None = None  # "float8_e4m3fn": e4m3 ring caches with per-(slot, head) scales (runtime.runners.precision)
    linear_dtype: str | None = None  # "float8_e4m3fn": the blocks' linears as scaled FP8 matmuls (model.fp8_linear)
    precision: str | None = None  # "fp8": the preset the FP8 fields were spelled out from (``with_precision``)
    parallel: str | None = None  # "ulysses": one stream over a process group's ranks (runtime.parallel.ulysses)
    group: object = None  # with parallel: a torch.distributed ProcessGroup; None = the default group

    def __post_init__(self):
        check_chunk_size(self.chunk_size)
        for name in ("cuda_graphs", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise RequestTypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("attention", "dit"):
            if not isinstance(getattr(self, name), str):
                raise RequestTypeError(f"{name} must be a name (a str), got {getattr(self, name)!r}")
        if self.engine_dir is not None and not isinstance(self.engine_dir, str):
            object.__setattr__(self, "engine_dir", str(self.engine_dir))  # a Path is the same folder
        precision_rules.check(self)
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.group is not None and self.parallel is None:
            raise ValueError("group= is the process group of a sequence-parallel engine: set parallel='ulysses' with it")
        if runner_traits(self.dit).exported_graphs:
            if self.cuda_graphs or self.compile:
                raise ValueError(f"cuda_graphs and compile apply to dit='torch'; dit={self.dit!r} runs exported graphs")
            if self.parallel:
                raise ValueError(f"parallel={self.parallel!r} shards the torch runner's forwards; dit={self.dit!r} runs exported "
                                 "whole-model graphs, one process each: use dit='torch' with parallel, or no parallel")
            precision_rules.refuse_for_exported_graphs(self)

    def replace(self, **changes) -> "EngineConfig":
        """A copy with ``changes``, checked as a new config."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def with_precision(cls, precision: str, attention: str = "torch", **settings) -> "EngineConfig":
        """A config with ``precision``'s fields spelled out: for ``"fp8"``, ``kv_dtype`` and ``linear_dtype`` e4m3 and
        ``attention``'s FP8 core (``torch`` -> ``torch_fp8``, ``triton`` or ``auto`` -> ``triton_fp8``)."""
        return cls(**precision_rules.spelled_out(precision, attention), **settings)
