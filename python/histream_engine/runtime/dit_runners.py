"""Who runs a chunk's DiT forwards: torch (the model itself), or exported graphs through ONNX Runtime or TensorRT.

``EngineConfig(dit=...)`` picks one; ``dit_backends()`` lists them with the reason one cannot run here. A graph
runner, per forward: looks up the signature's graph in the export manifest, gathers the window's other frames'
K/V from the ring into preallocated inputs, runs the graph, and writes the chunk's K/V (un-rotated: graph engines
keep K un-rotated in the ring) into its ring rows. Every signature a request needs is checked against the
manifest before its first chunk runs.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..attention.rope import grid_positions, rope_cos_sin
from ..attention.torch_ref import TorchAttention
from .graph_signature import DTYPE_NAMES, Manifest, Signature, read_manifest

DIT_RUNNERS = ("torch", "onnxruntime", "tensorrt")


def _onnxruntime_reason() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
    return None


def _tensorrt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install tensorrt; it needs an NVIDIA GPU and driver)"
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU, and none is visible"
    return None


REASONS: dict[str, Callable[[], str | None]] = {"torch": lambda: None, "onnxruntime": _onnxruntime_reason, "tensorrt": _tensorrt_reason}


def dit_backends() -> list[tuple[str, bool, str]]:
    """Every DiT runner as (name, available, reason); reason is "" when available."""
    return [(name, (why := REASONS[name]()) is None, why or "") for name in DIT_RUNNERS]


def patch_vectors(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Latents ``[B, C, F, H, W]`` -> patch vectors ``[B, F/pt, H/ph, W/pw, C*pt*ph*pw]`` (order c, dt, dy, dx), what
    ``WanDiT.embed_patches`` takes: the patch embedding's input without its convolution."""
    B, C, Fr, H, W = x.shape
    pt, ph, pw = patch_size
    x = x.reshape(B, C, Fr // pt, pt, H // ph, ph, W // pw, pw)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, Fr // pt, H // ph, W // pw, -1)


class TorchForwards:
    """The model's own forwards (the default)."""

    name = "torch"
    run_mode = None  # the engine's eager / graph-replay bookkeeping says how each chunk ran
    rotate_keys = True  # K cached rotated where its positions never change (RingKVCache)

    def __init__(self, dit, backend, ops):
        self.dit, self.backend, self.ops = dit, backend, ops

    def check(self, sigs: list[Signature]) -> None:
        pass

    def prepare_cross(self, cross_kv):
        return cross_kv

    def step(self, resolution, x, t, cross, attn) -> torch.Tensor:
        return self.dit.forward_latents(x, t, cross, attn, self.backend, ops=self.ops)

    def recache_latents(self, resolution, x0, t, cross, attn) -> None:
        self.dit.forward_tokens(self.dit.patchify(x0), t, cross, attn, self.backend, cache_only=True, ops=self.ops)

    def recache_patches(self, resolution, patches, t, cross, attn) -> None:
        self.dit.forward_tokens(self.dit.embed_patches(patches), t, cross, attn, self.backend, cache_only=True, ops=self.ops)


@dataclass
class _Prepared:
    """A view's graph inputs that depend only on the window: gather rows and RoPE tables, built once per view."""

    rows: torch.Tensor | None  # [ctx] long ring rows of the window's other frames, window order
    cos: torch.Tensor  # [NV*S, D/2] float32, window order (the chunk last)
    sin: torch.Tensor


class GraphForwards:
    """Exported graphs, one per signature, through a ``session(path, entry)`` factory (ONNX Runtime or TensorRT)."""

    rotate_keys = False  # the ring keeps K un-rotated: graphs take the window's K as it was projected

    def __init__(self, name: str, dit, manifest: Manifest, session: Callable[[Path, dict], "GraphSession"]):
        self.name = self.run_mode = name
        self.dit, self.manifest, self._session = dit, manifest, session
        self._sessions: dict[Signature, GraphSession] = {}
        self._prepared: dict[str, tuple[object, _Prepared]] = {}  # resolution -> (the view it was built for, its inputs)
        self._window: dict[Signature, tuple[torch.Tensor, torch.Tensor]] = {}
        self.writer = TorchAttention()

    def check(self, sigs: list[Signature]) -> None:
        self.manifest.check_covers(sigs)

    def prepare_cross(self, cross_kv):
        """Stacked text K/V ``[L, B, T, H, D]`` padded to the model's text length and the logit bias ``[B, 1, 1, T]``:
        padding rows get -inf (attended by no query), merged padding keeps its log n (``merge_zero_rows``)."""
        k = torch.stack([kv[0] for kv in cross_kv])  # [L, B, Lc, H, D]
        v = torch.stack([kv[1] for kv in cross_kv])
        bias = cross_kv[0][2]
        L, B, Lc, H, D = k.shape
        T = self.dit.config.text_len
        if Lc > T:
            raise ValueError(f"the prompt has {Lc} rows; exported graphs take at most the model's text length {T}")
        full_bias = torch.full((B, 1, 1, T), float("-inf"), dtype=k.dtype, device=k.device)  # [B, 1, 1, T]
        full_bias[..., :Lc] = 0.0 if bias is None else bias
        pad = k.new_zeros(L, B, T - Lc, H, D)
        return torch.cat([k, pad], 2), torch.cat([v, pad], 2), full_bias

    def step(self, resolution, x, t, cross, attn) -> torch.Tensor:
        return self._run(resolution, patch_vectors(x, self.dit.config.patch_size), t, cross, attn, head=True)

    def recache_latents(self, resolution, x0, t, cross, attn) -> None:
        self._run(resolution, patch_vectors(x0, self.dit.config.patch_size), t, cross, attn, head=False)

    def recache_patches(self, resolution, patches, t, cross, attn) -> None:
        self._run(resolution, patches, t, cross, attn, head=False)

    def _prepare(self, resolution: str, view) -> _Prepared:
        """Built once per chunk and resolution (every forward of a chunk shares its view), and only the latest kept."""
        cached = self._prepared.get(resolution)
        if cached is None or cached[0] is not view:
            S, M = view.tokens_per_frame, view.query_frames
            ctx = torch.tensor(view.slots[:-M], dtype=torch.long)
            rows = (ctx[:, None] * S + torch.arange(S)[None, :]).reshape(-1).to(view.device) if len(ctx) else None
            cos, sin = rope_cos_sin(grid_positions(view.frame_pos, *view.grid, device=view.device), view.freqs, torch.float32)
            cached = self._prepared[resolution] = (view, _Prepared(rows, cos, sin))
        return cached[1]

    def _run(self, resolution, patches, t, cross, attn, head: bool):
        view, cache = attn.view, attn.cache
        sig = Signature(resolution, view.grid, view.query_frames, len(view.slots), patches.shape[0], DTYPE_NAMES[self.dit.dtype], head)
        entry = self.manifest.entry(sig)
        if sig not in self._sessions:
            self._sessions[sig] = self._session(self.manifest.root / entry["file"], entry)
        prep = self._prepare(resolution, view)
        cross_k, cross_v, cross_bias = cross
        inputs = {"patches": patches.to(self.dit.dtype).contiguous(), "time_sinusoid": self.dit.time_sinusoid(t),
                  "cross_k": cross_k, "cross_v": cross_v, "cross_bias": cross_bias, "rope_cos": prep.cos, "rope_sin": prep.sin}
        if prep.rows is not None:
            if sig not in self._window:  # preallocated, refilled in place for every forward of this signature
                shape = entry["inputs"]["window_k"]
                self._window[sig] = tuple(torch.empty(shape, dtype=cache.k.dtype, device=cache.k.device) for _ in range(2))
            wk, wv = self._window[sig]
            torch.index_select(cache.k, 2, prep.rows, out=wk)  # [L, B, ctx, H, D]
            torch.index_select(cache.v, 2, prep.rows, out=wv)
            inputs["window_k"], inputs["window_v"] = wk, wv
        for name, t_in in inputs.items():
            if list(t_in.shape) != entry["inputs"][name]:
                raise ValueError(f"graph {sig.name}: input {name} has shape {list(t_in.shape)}, the manifest says "
                                 f"{entry['inputs'][name]} for signature {sig}")
        out = self._sessions[sig].run(inputs)
        identity = nn.Identity()
        for layer in range(cache.k.shape[0]):  # K arrives after its RMSNorm, so it is written as it is
            self.writer.write_kv(cache.k[layer], cache.v[layer], view, out["chunk_k"][layer].flatten(-2),
                                 out["chunk_v"][layer].flatten(-2), identity)
        return out["flow"] if head else None


class GraphSession:
    """One graph, run on named torch tensors: ``run(inputs) -> outputs``."""

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class OnnxRuntimeSession(GraphSession):
    """ONNX Runtime: the CPU execution provider for CPU tensors; the CUDA one, with I/O bound to the torch tensors
    on their device (no host copies), for CUDA tensors where onnxruntime-gpu is installed."""

    def __init__(self, path: Path, entry: dict, device: torch.device, optimize: bool = True):
        import onnxruntime as ort

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


def graph_forwards(name: str, dit, engine_dir) -> GraphForwards:
    """The graph runner ``name`` over the export (or TensorRT build) in ``engine_dir``, refusing with the reason when
    it cannot run here."""
    if (why := REASONS[name]()) is not None:
        raise RuntimeError(f"dit={name!r} is unavailable: {why}")
    if engine_dir is None:
        raise ValueError(f"dit={name!r} needs engine_dir: the folder histream export (or histream build-trt) wrote")
    if name == "onnxruntime":
        if dit.dtype == torch.bfloat16:
            raise ValueError("dit='onnxruntime' runs float32 or float16 graphs (numpy and ONNX Runtime's I/O binding have no "
                             "bfloat16): export with --dtype float16 or float32, or use dit='tensorrt' for bfloat16")
        manifest = read_manifest(engine_dir, dit)
        return GraphForwards(name, dit, manifest,
                             lambda path, entry: OnnxRuntimeSession(path, entry, dit.device, optimize=not manifest.fp8))
    from .tensorrt_session import TensorRTSession, read_trt_manifest

    manifest, plans = read_trt_manifest(engine_dir, dit)
    return GraphForwards(name, dit, manifest, lambda path, entry: TensorRTSession(plans[path.name], entry, dit.device))
