"""Export the DiT forwards a schedule needs to ONNX, one file per signature, with a manifest.

    histream export --schedule histream --height 1088 --width 1920 --out DIR [--model-dir ... | --preset ...]

Each graph is traced from ``graph.GraphForward`` with the dynamo exporter (opset ``OPSET``), checked with
``onnx.checker`` and refused if it holds a complex or otherwise unsupported op. Weights are baked in; graphs over
``EXTERNAL_DATA_BYTES`` keep them in an external-data file beside the ``.onnx`` (protobuf's 2 GB limit).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..model.dit import WanDiT
from ..optional import require
from ..model.decoder import VAE_SPACE_STRIDE
from ..runtime.video_request import check_video_request
from .manifest import write_manifest
from .signature import GRAPH_INPUTS, GRAPH_OUTPUTS, Signature, needed_signatures
from ..runtime.denoise.schedules import resolve_schedule
from .graph_forward import GraphForward, example_inputs

OPSET = 19  # the first with float8 Quantize/DequantizeLinear; ONNX Runtime and TensorRT 10 read it
EXTERNAL_DATA_BYTES = 1 << 30
# Ops a graph may hold: what the exporter emits for the DiT, nothing complex-valued or custom.
ALLOWED_OPS = {
    "Add", "Cast", "Concat", "Constant", "Div", "Einsum", "Erf", "Expand", "Gather", "Gemm", "LayerNormalization",
    "MatMul", "Mul", "Neg", "Pow", "Reciprocal", "ReduceMean", "Reshape", "Sigmoid", "Slice", "Softmax", "Split",
    "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Where", "QuantizeLinear", "DequantizeLinear",
}


def schedule_signatures(dit: WanDiT, schedule: str, height: int, width: int, frames: int, batch: int = 1,
                        chunk_size: int = 3) -> list[Signature]:
    sched = resolve_schedule(schedule)
    latent_frames = check_video_request(frames, height, width, chunk_size, sched, dit.config.patch_size)
    latent_hw = (height // VAE_SPACE_STRIDE, width // VAE_SPACE_STRIDE)
    return needed_signatures(dit.config, sched, chunk_size, latent_frames, latent_hw, batch, dit.dtype)


def check_graph_ops(model) -> None:
    ops = {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    if bad := sorted(ops - ALLOWED_OPS):
        raise RuntimeError(f"the exported graph holds ops outside the supported set: {bad}")
    complex_types = {14, 15}  # TensorProto.COMPLEX64, COMPLEX128
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.tensor_type.elem_type in complex_types:
            raise RuntimeError(f"the exported graph has a complex tensor {vi.name}")


def export_signature(dit: WanDiT, sig: Signature, path: Path, transform: Callable | None = None) -> dict:
    """One graph to ``path``; returns its manifest entry. ``transform`` may rewrite the ONNX model before saving."""
    onnx = require("onnx", "onnx", "ONNX export")

    inputs = example_inputs(dit, sig)
    names = [n for n in GRAPH_INPUTS if n in inputs]
    outputs = [n for n in GRAPH_OUTPUTS if sig.head or n != "flow"]
    module = GraphForward(dit, sig).eval()
    # the exporter narrates each pass on stdout and warns about torch internals; export_graphs logs one line a graph
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns, per graph, that torchvision's ops are not registered
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, tuple(inputs[n] for n in names), dynamo=True, opset_version=OPSET,
                                        input_names=names, output_names=outputs, verbose=False)
    finally:
        exporter_log.setLevel(level)
    model = program.model_proto
    if transform is not None:
        model = transform(model, sig)
    check_graph_ops(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in dit.parameters())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        (path.parent / (path.name + ".data")).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        onnx.checker.check_model(str(path))
    else:
        onnx.save_model(model, str(path))
        onnx.checker.check_model(model)
    in_shapes, out_shapes = sig.shapes(dit.config)
    files = [path.name] + ([path.name + ".data"] if external else [])
    return {"file": path.name, "inputs": in_shapes, "outputs": out_shapes, "external_data": external,
            "bytes": sum((path.parent / f).stat().st_size for f in files)}


def export_graphs(dit: WanDiT, schedule: str, height: int, width: int, frames: int, out: str | Path, batch: int = 1,
                  only: list[str] | None = None, fp8: bool = False, log: Callable[[str], None] = print) -> Path:
    """Every graph the schedule needs at this size (or the named subset ``only``), with FP8 Q/DQ on the blocks'
    linear layers when ``fp8`` (``fp8``); returns the manifest's path."""
    sigs = schedule_signatures(dit, schedule, height, width, frames, batch)
    if only:
        by_name = {s.name: s for s in sigs}
        unknown = [n for n in only if n not in by_name]
        if unknown:
            raise ValueError(f"schedule {schedule!r} at {width}x{height}, {frames} frames, never runs {unknown}; it runs: "
                             + ", ".join(by_name))
        sigs = [by_name[n] for n in only]
    transform, extra = None, {"fp8": fp8}
    if fp8:
        from .fp8 import calibrate, quantize_block_linears

        if dit.dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"--fp8 keeps the non-block layers in bfloat16 (or float32 for checks), not {dit.dtype}")
        log("fp8: calibrating activation scales")
        amax = calibrate(dit, schedule, height, width)
        transform = lambda model, sig: quantize_block_linears(model, sig, amax)  # noqa: E731
        extra["fp8_input_amax"] = amax
    out = Path(out)
    entries = []
    for i, sig in enumerate(sigs, 1):
        t0 = time.perf_counter()
        entry = export_signature(dit, sig, out / f"{sig.name}.onnx", transform)
        entry["export_seconds"] = round(time.perf_counter() - t0, 2)
        entries.append((sig, entry))
        log(f"[{i}/{len(sigs)}] {sig.name}: {entry['bytes'] / 2**20:.1f} MiB in {entry['export_seconds']:.1f} s")
    return write_manifest(out, dit, schedule, entries, {"opset": OPSET, "height": height, "width": width, "frames": frames, **extra})
