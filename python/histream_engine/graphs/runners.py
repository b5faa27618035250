"""Exported graphs as the engine's DiT runner, through ONNX Runtime or TensorRT (``EngineConfig(dit=...)``, reached
by name through ``runtime.runners.registry``).

Per forward: look up the signature's graph in the export manifest, gather the window's other frames' K/V from the
ring into preallocated inputs, run the graph, and write the chunk's K/V (un-rotated: graph engines keep K
un-rotated in the ring) into its ring rows. Every signature a request needs is checked against the manifest before
its first chunk runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..attention.rope import grid_positions, rope_cos_sin
from ..attention.torch_ref import TorchAttention
from .manifest import Manifest, read_manifest
from .onnxruntime_session import OnnxRuntimeSession
from .session import GraphSession
from .signature import DTYPE_NAMES, Signature, needed_signatures


def patch_vectors(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Latents ``[B, C, F, H, W]`` -> patch vectors ``[B, F/pt, H/ph, W/pw, C*pt*ph*pw]`` (order c, dt, dy, dx), what
    ``WanDiT.embed_patches`` takes: the patch embedding's input without its convolution."""
    B, C, Fr, H, W = x.shape
    pt, ph, pw = patch_size
    x = x.reshape(B, C, Fr // pt, pt, H // ph, ph, W // pw, pw)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, Fr // pt, H // ph, W // pw, -1)


@dataclass
class _Prepared:
    """A view's graph inputs that depend only on the window: gather rows and RoPE tables, built once per view."""

    rows: torch.Tensor | None  # [ctx] long ring rows of the window's other frames, window order
    cos: torch.Tensor  # [NV*S, D/2] float32, window order (the chunk last)
    sin: torch.Tensor


class GraphForwards:
    """Exported graphs, one per signature, through a ``session(path, entry)`` factory (ONNX Runtime or TensorRT)."""

    rotate_keys = False  # the ring keeps K un-rotated: graphs take the window's K as it was projected
    head_shards = 1  # whole-model graphs of one process: they do not run sharded

    def __init__(self, name: str, dit, manifest: Manifest, session: Callable[[Path, dict], "GraphSession"]):
        self.name = self.run_mode = name
        self.dit, self.manifest, self._session = dit, manifest, session
        self._sessions: dict[Signature, GraphSession] = {}
        self._prepared: dict[str, tuple[object, _Prepared]] = {}  # resolution -> (the view it was built for, its inputs)
        self._window: dict[Signature, tuple[torch.Tensor, torch.Tensor]] = {}
        self.writer = TorchAttention()

    def check(self, sched, chunk_size: int, shape) -> None:
        """Refuse, before the first chunk, a request (schedule, chunk size, ``runtime.video_request.VideoShape``) that needs a
        graph the export does not hold."""
        latent_hw = (shape.latent_height, shape.latent_width)
        self.manifest.check_covers(needed_signatures(self.dit.config, sched, chunk_size, shape.latent_frames, latent_hw,
                                                     shape.batch, self.dit.dtype))

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

    def recache_tokens(self, tokens, t, cross_kv, attend) -> None:
        """A prompt switch's re-cache pass: through the model in torch (no export holds a graph of that window), with
        ``cross_kv`` as ``WanDiT.cross_kv`` gives it; it writes K un-rotated, as these graphs read the ring."""
        self.dit.forward_tokens(tokens, t, cross_kv, attend, self.writer, cache_only=True)

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
            self.writer.write_kv(cache.layer(layer), view, out["chunk_k"][layer].flatten(-2), out["chunk_v"][layer].flatten(-2),
                                 identity)
        return out["flow"] if head else None


def onnxruntime_forwards(dit, backend, ops, engine_dir, parallel=None) -> GraphForwards:
    """ONNX Runtime over the ``histream export`` folder ``engine_dir`` (the graphs hold their own attention: ``backend``
    and ``ops`` are not used; ``parallel`` is always None, as the registry refuses it for exported graphs)."""
    if dit.dtype == torch.bfloat16:
        raise ValueError("dit='onnxruntime' runs float32 or float16 graphs (numpy and ONNX Runtime's I/O binding have no "
                         "bfloat16): export with --dtype float16 or float32, or use dit='tensorrt' for bfloat16")
    manifest = read_manifest(engine_dir, dit)
    return GraphForwards("onnxruntime", dit, manifest,
                         lambda path, entry: OnnxRuntimeSession(path, entry, dit.device, optimize=not manifest.fp8))


def tensorrt_forwards(dit, backend, ops, engine_dir, parallel=None) -> GraphForwards:
    """TensorRT over the ``histream build-trt`` folder ``engine_dir``."""
    from .tensorrt_session import TensorRTSession, read_trt_manifest

    manifest, plans = read_trt_manifest(engine_dir, dit)
    return GraphForwards("tensorrt", dit, manifest, lambda path, entry: TensorRTSession(plans[path.name], entry, dit.device))
