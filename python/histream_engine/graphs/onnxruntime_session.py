"""Running an exported graph through ONNX Runtime on torch tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from ..optional import require
from .session import GraphSession


class OnnxRuntimeSession(GraphSession):
    """ONNX Runtime: the CPU execution provider for CPU tensors; the CUDA one, with I/O bound to the torch tensors
    on their device (no host copies), for CUDA tensors where onnxruntime-gpu is installed."""

    def __init__(self, path: Path, entry: dict, device: torch.device, optimize: bool = True):
        ort = require("onnxruntime", "onnx", "dit='onnxruntime'")

        self.device = device
        options = ort.SessionOptions()
        if not optimize:
            # ONNX Runtime 1.32's CPU graph optimizations (basic level and up) corrupt float8 Q/DQ graphs: one of our
            # FP8 graphs went from 3.5% error to 73% with them on; the graphs run as exported instead.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("dit='onnxruntime' with the model on CUDA needs onnxruntime-gpu (its CUDA execution "
                                   f"provider); this onnxruntime has {ort.get_available_providers()}")
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.out_shapes = entry["outputs"]

    def run(self, inputs):
        if self.device.type != "cuda":
            feeds = {k: v.detach().contiguous().numpy() for k, v in inputs.items()}
            return {name: torch.from_numpy(a) for name, a in zip(self.outputs, self.session.run(self.outputs, feeds))}
        import numpy as np

        binding = self.session.io_binding()
        np_types = {torch.float32: np.float32, torch.float16: np.float16}  # bfloat16 is refused in graph_forwards
        like = inputs["patches"]
        outs = {n: torch.empty(s, dtype=like.dtype, device=self.device) for n, s in self.out_shapes.items()}
        bound = {name: t.contiguous() for name, t in inputs.items()}  # kept alive until the run has read them
        for name, t in list(bound.items()) + list(outs.items()):
            bind = binding.bind_input if name in bound else binding.bind_output
            bind(name, "cuda", self.device.index or 0, np_types[t.dtype], list(t.shape), t.data_ptr())
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outs
