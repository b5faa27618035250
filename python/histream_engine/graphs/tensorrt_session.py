"""Running TensorRT engines built by ``histream build-trt`` (``tensorrt_build``) on torch tensors.

I/O is bound to the tensors' device memory (``set_tensor_address``) and the engine enqueued on torch's current
stream (``execute_async_v3``): no host copies, no sync. Outputs are preallocated once per engine (their shapes
are fixed by the signature), so the addresses stay put from call to call.

Written from the TensorRT 10 Python API documentation; the lent GPU machines have no TensorRT, so this has not
run (docs/graphs.md says what has run where).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..optional import require
from .manifest import Manifest, read_manifest, read_record
from .session import GraphSession

TRT_MANIFEST = "tensorrt.json"


def gpu_slug(device: torch.device | None = None) -> str:
    name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no-gpu"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def plan_name(onnx_file: str, fingerprint: str, precision: str, trt_version: str, gpu: str) -> str:
    """An engine's cache name: its signature (the ONNX file's stem), the weights it bakes in, precision, TensorRT
    version and GPU, so a re-export of other weights into the same folder never reuses an old engine."""
    return f"{Path(onnx_file).stem}.{fingerprint}.{precision}.trt{trt_version}.{gpu}.plan"


def read_trt_manifest(root: str | Path, dit) -> tuple[Manifest, dict[str, Path]]:
    """The graphs' manifest (copied from the export) and each ONNX file's engine, refusing engines built by another
    TensorRT or for another GPU."""
    trt = require("tensorrt", "tensorrt", "TensorRT engines")

    root = Path(root)
    record = read_record(root, TRT_MANIFEST, "histream build-trt",
                         lambda r: {k: r[k] for k in ("tensorrt_version", "gpu", "plans")})
    if record["tensorrt_version"] != trt.__version__:
        raise CheckpointError(f"the engines in {root} were built by TensorRT {record['tensorrt_version']}, this is "
                              f"{trt.__version__}: rebuild them (histream build-trt)")
    if record["gpu"] != gpu_slug(dit.device):
        raise CheckpointError(f"the engines in {root} were built for {record['gpu']}, this GPU is {gpu_slug(dit.device)}: "
                              "rebuild them here (histream build-trt)")
    manifest = read_manifest(root, dit)
    plans = {onnx: root / plan for onnx, plan in record["plans"].items()}
    for onnx, plan in plans.items():
        if not plan.is_file():
            raise CheckpointError(f"engine {plan} for {onnx} is missing: rebuild (histream build-trt)")
    return manifest, plans


class TensorRTSession(GraphSession):
    def __init__(self, plan: Path, entry: dict, device: torch.device):
        trt = require("tensorrt", "tensorrt", "TensorRT engines")

        self.device = device
        # the runtime (and its logger) must outlive the engines it deserializes
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise CheckpointError(f"TensorRT could not deserialize {plan}: rebuild it (histream build-trt)")
        with torch.cuda.device(device):
            self.context = self.engine.create_execution_context()
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16}
        self.inputs, self.outputs = {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            spec = (tuple(self.engine.get_tensor_shape(name)), dtypes[self.engine.get_tensor_dtype(name)])
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = spec
            else:
                self.outputs[name] = torch.empty(spec[0], dtype=spec[1], device=device)
                self.context.set_tensor_address(name, self.outputs[name].data_ptr())

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, (shape, dtype) in self.inputs.items():
            t = inputs[name]
            if tuple(t.shape) != shape or t.dtype != dtype or not t.is_cuda or not t.is_contiguous():
                raise ValueError(f"TensorRT input {name}: expected contiguous CUDA {dtype} {list(shape)}, got {t.dtype} "
                                 f"{list(t.shape)} on {t.device}")
            self.context.set_tensor_address(name, t.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT failed to enqueue the engine (see its log above)")
        return self.outputs
