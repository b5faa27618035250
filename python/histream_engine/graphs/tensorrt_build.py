"""``histream build-trt``: TensorRT engines from an export folder's ONNX graphs, one per signature.

    histream build-trt --onnx DIR --precision bf16|fp16|fp8 [--out DIR/tensorrt-PRECISION] [--workspace-gib 8]

Networks are strongly typed: each layer runs in the precision the ONNX graph gives it, so the precision is the
export's (``histream export --dtype bfloat16`` or ``float16``; ``--fp8`` adds Q/DQ around the blocks' linear
layers and keeps the modulation, embedders, patch embedding and head in bf16). Engines are cached under names
holding the signature, the weights' fingerprint, the TensorRT version and the GPU (``tensorrt_session.plan_name``) and reused when
present. Written from the TensorRT 10 Python API documentation: the lent GPUs have no TensorRT, so this has not
run here (docs/graphs.md).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ..checkpoint import CheckpointError
from ..optional import require
from .manifest import MANIFEST
from .tensorrt_session import TRT_MANIFEST, gpu_slug, plan_name

PRECISIONS = {"bf16": "bfloat16", "fp16": "float16", "fp8": "bfloat16"}  # the graphs' dtype each precision needs


def check_precision(manifest: dict, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    dtypes = {g["signature"]["dtype"] for g in manifest["graphs"]}
    if dtypes != {PRECISIONS[precision]}:
        raise ValueError(f"--precision {precision} needs graphs exported in {PRECISIONS[precision]}, these are {sorted(dtypes)}: "
                         f"histream export --dtype {PRECISIONS[precision]}" + (" --fp8" if precision == "fp8" else ""))
    if (precision == "fp8") != bool(manifest.get("fp8")):
        raise ValueError("--precision fp8 needs graphs exported with --fp8 (Q/DQ around the blocks' linear layers), and "
                         "bf16 needs graphs exported without it")


def build_engine(onnx_path: Path, plan_path: Path, workspace_bytes: int) -> None:
    trt = require("tensorrt", "tensorrt", "TensorRT engines")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # external data is read from beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    partial = plan_path.with_name(plan_path.name + ".partial")  # an interrupted build never looks cached
    partial.write_bytes(bytes(serialized))
    os.replace(partial, plan_path)


def build_trt(onnx_dir: str | Path, precision: str, out: str | Path | None = None, workspace_gib: float = 8.0,
              log: Callable[[str], None] = print) -> Path:
    """Engines for every graph of ``onnx_dir``; returns the output folder (``EngineConfig(dit="tensorrt", engine_dir=...)``)."""
    trt = require("tensorrt", "tensorrt", "TensorRT engines")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("histream build-trt needs a CUDA GPU: engines are built for the GPU they run on")
    onnx_dir = Path(onnx_dir)
    manifest_path = onnx_dir / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{onnx_dir} has no {MANIFEST}: point --onnx at a folder written by histream export")
    manifest = json.loads(manifest_path.read_text())
    check_precision(manifest, precision)
    out = Path(out) if out else onnx_dir / f"tensorrt-{precision}"
    out.mkdir(parents=True, exist_ok=True)
    gpu = gpu_slug()
    plans = {}
    for i, graph in enumerate(manifest["graphs"], 1):
        name = plan_name(graph["file"], manifest["weights_fingerprint"], precision, trt.__version__, gpu)
        plans[graph["file"]] = name
        if (out / name).is_file():
            log(f"[{i}/{len(manifest['graphs'])}] {name}: cached")
            continue
        t0 = time.perf_counter()
        build_engine(onnx_dir / graph["file"], out / name, int(workspace_gib * 2**30))
        log(f"[{i}/{len(manifest['graphs'])}] {name}: built in {time.perf_counter() - t0:.0f} s")
    shutil.copyfile(manifest_path, out / MANIFEST)
    (out / TRT_MANIFEST).write_text(json.dumps({"precision": precision, "tensorrt_version": trt.__version__, "gpu": gpu,
                                                "onnx_dir": str(onnx_dir.resolve()), "plans": plans}, indent=2))
    return out
