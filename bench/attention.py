"""The attention microbenchmark: every backend at a real 1.3B shape, pre-pass and core timed apart.

    python bench/attention.py [--resolution 1088x1920 | 544x960] [--repeats 20] [--out PATH.json]

Shape (DESIGN 6/8): a 3-frame chunk (68x120 = 8160 tokens per frame at 1088x1920, 34x60 at 544x960)
attending anchor + 2 history frames + itself in a wrapped 6-slot ring, 12 heads x 128, bf16, NTK-scaled
RoPE, with ``absolute`` positions (K cached rotated: only Q is rotated per call) and ``window`` positions
(the visible K rotated per call too). Each backend's time counts every pass of its cached path after the
K/V write: the torch backend rotates and runs SDPA on slices of the ring; the pre-pass backends rotate
(``rope_prepass``) and run their core, and those two are also timed alone. TFLOP/s count 4 * Lq * Lk * D * H. Errors are ||out - ref|| / ||ref||
against the torch reference on float32-upcast inputs, beside the bf16 torch reference's own error.
Targets on an H100: the engine's path (the best backend) >= 550 TFLOP/s, our Triton core >= 450 (issue 10), our
CUDA core (mma.sync, ``cuda`` backend) >= 300 (issue 11).

FP8 (issue 25, ``docs/fp8.md``): the FP8 backends read the same K/V as an e4m3 ring cache holds it (one scale per
frame slot and head, V keys-contiguous), so their error against the float32 reference counts the cache's rounding
and the core's. ``triton_fp8`` is timed like the others, its FP8 pre-pass (rotate + quantize Q, and K with ``window``
positions) apart from its core; ``torch_fp8``, the core's numerics model in torch, is run once for its error and
not timed. ``flash_attn3_fp8`` is FlashAttention-3's FP8 forward (``flash_attn_interface.flash_attn_func`` with
e4m3 Q, K, V and per-(batch, head) descales) behind the bf16 RoPE pre-pass, where FlashAttention-3 is installed
on an sm_90 GPU: its pre-pass time includes quantizing Q, K and V each call (FA3 takes no per-slot scales).
``--small`` runs a tiny shape, for checking the script on a CPU (timings meaningless).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from histream_engine.attention import BACKENDS, get_backend
from histream_engine.attention.auto import auto_choices
from histream_engine.attention.fp8_quant import group_scales, quantize, quantize_frames
from histream_engine.attention.protocol import CacheLayer, PrepassCore
from histream_engine.device_timing import device_seconds
from histream_engine.cli_parser import make_parser
from histream_engine.numerics import rel_err
from histream_engine.output_paths import OutputPathError, check_output_file
from histream_engine.optional import is_installed
from histream_engine.attention.ring import RingView
from histream_engine.attention.rope import inv_freqs
from histream_engine.kernels.fp8_constants import E4M3

GRIDS = {"1088x1920": (68, 120), "544x960": (34, 60)}
TRAIN_GRID = (30, 52)
TARGETS_TFLOPS = {"engine_path": 550.0, "triton_core": 450.0, "cuda_core": 300.0}


def median_seconds(fn, repeats: int, device) -> float:
    # one warm-up call compiles and autotunes; up to three settle clocks and caches for a real measurement, and a
    # --repeats 1 run (a smoke test) wants none of that
    return statistics.median(device_seconds(fn, device, warmup=min(3, repeats), repeats=repeats))


def run_backends(q, ring: CacheLayer, view, flop, repeats, device) -> dict:
    """Every registered backend on one view of the model-dtype ``ring``: time, TFLOP/s, error against the float32
    reference; pre-pass and core apart. An FP8 core (its ``capabilities``) reads the same K/V as an e4m3 cache holds it."""
    ref = get_backend("torch").ring_attention(q.float(), CacheLayer(ring.k.float(), ring.v.float()), view)
    e4m3 = None
    results = {}
    for entry in BACKENDS.entries:
        reason = entry.unavailable_reason()
        if reason is not None:
            results[entry.name] = {"skipped": reason}
            print(f"{entry.name:>10}: skipped, {reason}", flush=True)
            continue
        backend = get_backend(entry.name)
        if backend.capabilities.fp8_core:
            e4m3 = e4m3 or fp8_ring(ring.k, ring.v, view.tokens_per_frame)
            results[entry.name] = run_fp8(backend, q, e4m3, view, ref, flop, repeats, device)
            continue
        try:
            out = backend.ring_attention(q, ring, view)
            secs = median_seconds(lambda: backend.ring_attention(q, ring, view), repeats, device)
        except Exception as e:  # noqa: BLE001 - one backend failing at this shape is a result; the others still run
            results[entry.name] = {"failed": f"{type(e).__name__}: {e}"}
            print(f"{entry.name:>10}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        r = {"seconds": secs, "tflops": flop / secs / 1e12, "rel_err": rel_err(out, ref)}
        line = f"{entry.name:>10}: {secs * 1e3:9.3f} ms  {r['tflops']:7.1f} TFLOP/s  rel err {r['rel_err']:.2e}"
        if isinstance(backend, PrepassCore):
            r.update(split_seconds(backend, q, ring, view, flop, repeats, device))
            line += f"  (pre-pass {r['prepass_seconds'] * 1e3:.3f} ms, core {r['core_seconds'] * 1e3:.3f} ms = {r['core_tflops']:.1f} TFLOP/s)"
        results[entry.name] = r
        print(line, flush=True)
    results["flash_attn3_fp8"] = run_fa3_fp8(q, ring, view, ref, flop, repeats, device)
    torch_err = results.get("torch", {}).get("rel_err")
    for r in results.values():
        if "rel_err" in r:
            r["err_over_torch"] = r["rel_err"] / torch_err if torch_err else None
    return results


def split_seconds(backend: PrepassCore, q, ring: CacheLayer, view, flop, repeats, device) -> dict:
    """A pre-pass backend's pre-pass and core timed apart."""
    core_inputs = backend.prepass(q, ring, view)
    pre = median_seconds(lambda: backend.prepass(q, ring, view), repeats, device)
    core = median_seconds(lambda: backend.core(*core_inputs), repeats, device)
    return {"prepass_seconds": pre, "core_seconds": core, "core_tflops": flop / core / 1e12}


def fp8_ring(k_store: torch.Tensor, v_store: torch.Tensor, tokens_per_frame: int) -> CacheLayer:
    """``[B, R, H, D]`` K and V -> the e4m3 ring layer an FP8 cache would hold (``runtime.kv_cache``): K head-major, V
    stored ``[B, H, D, R16]`` and seen as ``[B, R, H, D]`` (keys contiguous, rows padded to 16), scales ``[B, slots, H]``."""
    B, R, H, D = k_store.shape
    k8 = torch.zeros(B, H, R, D, dtype=E4M3, device=k_store.device).transpose(1, 2)  # [B, R, H, D]
    v_t = torch.zeros(B, H, D, -(-R // 16) * 16, dtype=E4M3, device=k_store.device)  # [B, H, D, R16]
    v8 = v_t[..., :R].permute(0, 3, 1, 2)  # [B, R, H, D], D strided
    scales = []
    for store, x in ((k8, k_store), (v8, v_store)):
        codes, scale = quantize_frames(x, tokens_per_frame)  # [B, R, H, D] e4m3, [B, slots, H]
        store.view(torch.uint8).copy_(codes.view(torch.uint8))  # copy_ has no float8 -> strided float8 kernel everywhere
        scales.append(scale)
    return CacheLayer(k8, v8, *scales)


def run_fp8(backend, q, ring: CacheLayer, view, ref, flop, repeats, device) -> dict:
    """An FP8 backend over the e4m3 ring: its error against the float32 reference; timed (pre-pass and core apart)
    where it is a kernel, not where it is the torch model of one."""
    name = backend.name
    try:
        out = backend.ring_attention(q, ring, view)
        r = {"rel_err": rel_err(out, ref), "precision": "e4m3"}
        if not isinstance(backend, PrepassCore):
            r["not_timed"] = "the FP8 core's numerics model in torch: its error only"
            print(f"{name:>10}: rel err {r['rel_err']:.2e} (not timed: the FP8 core's torch model)", flush=True)
            return r
        secs = median_seconds(lambda: backend.ring_attention(q, ring, view), repeats, device)
        r.update(split_seconds(backend, q, ring, view, flop, repeats, device))
    except Exception as e:  # noqa: BLE001 - one backend failing at this shape is a result; the others still run
        print(f"{name:>10}: FAILED {type(e).__name__}: {e}", flush=True)
        return {"failed": f"{type(e).__name__}: {e}"}
    r.update(seconds=secs, tflops=flop / secs / 1e12)
    print(f"{name:>10}: {secs * 1e3:9.3f} ms  {r['tflops']:7.1f} TFLOP/s  rel err {r['rel_err']:.2e}  (pre-pass "
          f"{r['prepass_seconds'] * 1e3:.3f} ms, core {r['core_seconds'] * 1e3:.3f} ms = {r['core_tflops']:.1f} TFLOP/s)", flush=True)
    return r


def fa3_fp8_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], dict]:
    """Rotated ``[B, H, L, D]`` Q, K and V -> FlashAttention-3's FP8 arguments: e4m3 ``[B, L, H, D]`` (D contiguous,
    as its TMA loads need) and one float32 descale per (batch, head), ``[B, H]`` each, the finest it takes."""
    args, descales = [], {}
    for name, x in (("q", q), ("k", k), ("v", v)):
        scale = group_scales(x, (2, 3))  # [B, H, 1, 1] amax / 448
        args.append(quantize(x, scale).transpose(1, 2).contiguous())  # [B, L, H, D] e4m3
        descales[f"{name}_descale"] = scale[:, :, 0, 0].contiguous()  # [B, H] float32
    return tuple(args), descales


def fa3_fp8(fa3, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # [B, Lq, H, D] bf16
    args, descales = fa3_fp8_inputs(q, k, v)
    out = fa3(*args, **descales)
    return out[0] if isinstance(out, tuple) else out  # some FlashAttention-3 releases also return the log-sum-exp


def fa3_fp8_reason(device: torch.device) -> str | None:
    if not is_installed("flash_attn_interface"):
        return "FlashAttention-3 (flash_attn_interface) is not installed"
    if device.type != "cuda":
        return "no CUDA GPU is visible"
    if torch.cuda.get_device_capability(device) < (9, 0):
        return f"FlashAttention-3's FP8 forward needs sm_90; {torch.cuda.get_device_name(device)} is older"
    if not is_installed("triton"):
        return "the RoPE pre-pass in front of it is a Triton kernel and triton is not installed"
    return None


def run_fa3_fp8(q, ring: CacheLayer, view, ref, flop, repeats, device) -> dict:
    """FlashAttention-3's FP8 forward behind our bf16 RoPE pre-pass: error, time, and its core alone."""
    if (reason := fa3_fp8_reason(device)) is not None:
        print(f"{'flash_attn3_fp8':>10}: skipped, {reason}", flush=True)
        return {"skipped": reason}
    from flash_attn_interface import flash_attn_func

    prepass = get_backend("triton").prepass
    try:
        out = fa3_fp8(flash_attn_func, *prepass(q, ring, view))
        secs = median_seconds(lambda: fa3_fp8(flash_attn_func, *prepass(q, ring, view)), repeats, device)
        args, descales = fa3_fp8_inputs(*prepass(q, ring, view))
        pre = median_seconds(lambda: fa3_fp8_inputs(*prepass(q, ring, view)), repeats, device)
        core = median_seconds(lambda: flash_attn_func(*args, **descales), repeats, device)
    except Exception as e:  # noqa: BLE001 - an FA3 build without FP8, or with another signature, is a result
        print(f"{'flash_attn3_fp8':>10}: FAILED {type(e).__name__}: {e}", flush=True)
        return {"failed": f"{type(e).__name__}: {e}"}
    r = {"seconds": secs, "tflops": flop / secs / 1e12, "rel_err": rel_err(out, ref), "precision": "e4m3",
         "prepass_seconds": pre, "core_seconds": core, "core_tflops": flop / core / 1e12}
    print(f"{'flash_attn3_fp8':>10}: {secs * 1e3:9.3f} ms  {r['tflops']:7.1f} TFLOP/s  rel err {r['rel_err']:.2e}  (pre-pass + "
          f"quantize {pre * 1e3:.3f} ms, core {core * 1e3:.3f} ms = {r['core_tflops']:.1f} TFLOP/s)", flush=True)
    return r


def main(argv=None) -> int:
    p = make_parser("python -m bench.attention", __doc__)
    p.add_argument("--resolution", default="1088x1920", choices=sorted(GRIDS), help="the video size whose attention shape is timed")
    p.add_argument("--positions", nargs="+", default=["absolute", "window"], choices=["absolute", "window"],
                   help="absolute: K cached rotated, Q-only pre-pass (every preset); window: the visible K rotated per call")
    p.add_argument("--small", action="store_true", help="a tiny shape, for checking the script on a CPU")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per backend")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="the inputs' dtype")
    p.add_argument("--out", type=Path, help="JSON path for the record; default: none written")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.out is not None:
        try:
            check_output_file(args.out, (".json",), "--out")  # now, not after the timing
        except OutputPathError as e:
            p.error(str(e))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    grid, heads, head_dim = ((4, 6), 2, 64) if args.small else (GRIDS[args.resolution], 12, 128)
    S = grid[0] * grid[1]
    ntk = (1.0, max(1.0, grid[0] / TRAIN_GRID[0]), max(1.0, grid[1] / TRAIN_GRID[1]))
    torch.manual_seed(0)
    q = torch.randn(1, 3 * S, heads, head_dim, device=device, dtype=dtype)  # [B, Lq, H, D]
    k_store = torch.randn(1, 6 * S, heads, head_dim, device=device, dtype=dtype)  # [B, slots*S, H, D]
    v_store = torch.randn(1, 6 * S, heads, head_dim, device=device, dtype=dtype)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})"
    flop = 4 * 3 * S * 6 * S * head_dim * heads
    results = {}
    for positions in args.positions:
        # a wrapped ring: anchor in slot 0, history frames in slots 4, 5, the chunk in slots 1, 2, 3
        frame_pos = [0, 10, 11, 12, 13, 14] if positions == "absolute" else [0, 1, 2, 3, 4, 5]
        view = RingView(slots=[0, 4, 5, 1, 2, 3], frame_pos=frame_pos, query_frames=3, grid=grid, num_slots=6,
                        freqs=inv_freqs(head_dim, 10000.0, ntk), device=device, rotated_keys=positions == "absolute")
        print(f"attention at {'small' if args.small else args.resolution}, {positions} positions "
              f"({'K cached rotated' if view.rotated_keys else 'K rotated per call'}): Lq {3 * S}, Lk {view.key_tokens}, "
              f"{heads} x {head_dim}, {args.dtype}, {device_name}", flush=True)
        results[positions] = run_backends(q, CacheLayer(k_store, v_store), view, flop, args.repeats, device)

    timed_ok = {(pos, n): r for pos, rs in results.items() for n, r in rs.items() if "tflops" in r}
    # the bf16 targets are judged on bf16 paths; the FP8 ones are reported beside them (no FP8 target is set)
    bf16_ok = [key for key, r in timed_ok.items() if "precision" not in r]
    best = max(bf16_ok, key=lambda key: timed_ok[key]["tflops"]) if bf16_ok else None
    targets = {
        "engine_path_tflops": timed_ok[best]["tflops"] if best else None,
        "engine_path": list(best) if best else None,
        **{f"{core}_core_tflops": max((r.get("core_tflops") or 0.0 for (pos, n), r in timed_ok.items() if n == core), default=None)
           for core in ("triton", "cuda", "triton_fp8", "flash_attn3_fp8")},
        **{f"{k}_target": v for k, v in TARGETS_TFLOPS.items()},
    }
    if best:
        print(f"fastest path: {best[1]} ({best[0]} positions) at {targets['engine_path_tflops']:.1f} TFLOP/s "
              f"(target {TARGETS_TFLOPS['engine_path']:.0f} on an H100); triton core alone: {targets['triton_core_tflops'] or float('nan'):.1f} "
              f"(target {TARGETS_TFLOPS['triton_core']:.0f}); cuda core alone: {targets['cuda_core_tflops'] or float('nan'):.1f} "
              f"(target {TARGETS_TFLOPS['cuda_core']:.0f})")
    if targets["triton_fp8_core_tflops"] or targets["flash_attn3_fp8_core_tflops"]:
        print(f"FP8 cores alone: triton_fp8 {targets['triton_fp8_core_tflops'] or float('nan'):.1f} TFLOP/s, FlashAttention-3 FP8 "
              f"{targets['flash_attn3_fp8_core_tflops'] or float('nan'):.1f} TFLOP/s")
    if args.out:
        record = {
            "command": "python bench/attention.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "device": device_name,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "shape": {"resolution": "small" if args.small else args.resolution, "Lq": 3 * S, "Lk": 6 * S,
                      "heads": heads, "head_dim": head_dim, "dtype": args.dtype, "flop": flop},
            "repeats": args.repeats,
            "positions": results,
            "auto_choices": auto_choices(),
            "targets": targets,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
