"""Ring attention at the real 1080p shape: the Triton kernel vs the torch backend (gather + RoPE + SDPA).

    python bench/ring_attention.py --out bench/results/<date>-<device>-ring-attention.json

Shape (DESIGN 6/8): a 3-frame chunk of 8160 tokens per frame (Lq = 24480) attending anchor + 2 history
frames + the chunk (Lk = 48960) in a wrapped ring, 12 heads x 128, bf16. The baseline's time includes
its gather copy and rotation, since the kernel does both in place. TFLOP/s count 4 * Lq * Lk * D * H.
``--small`` runs a tiny shape (for checking the script on CPU with TRITON_INTERPRET=1; timings meaningless).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from histream_engine.attention import get_backend
from histream_engine.attention.ring import RingView
from histream_engine.attention.rope import inv_freqs


def timed(fn, repeats: int, device) -> list[float]:
    """Seconds per call: CUDA events on GPU, wall clock elsewhere; three warm-up calls first."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    grid, heads, head_dim = ((4, 6), 2, 64) if args.small else ((68, 120), 12, 128)
    S = grid[0] * grid[1]
    # a wrapped ring: anchor in slot 0, history frames in slots 4, 5, the chunk in slots 1, 2, 3
    view = RingView(
        slots=[0, 4, 5, 1, 2, 3], frame_pos=[0, 10, 11, 12, 13, 14], query_frames=3, grid=grid, num_slots=6,
        freqs=inv_freqs(head_dim, 10000.0, (1.0, max(1.0, grid[0] / 30), max(1.0, grid[1] / 52))), device=device,
    )
    torch.manual_seed(0)
    q = torch.randn(1, 3 * S, heads, head_dim, device=device, dtype=dtype)  # [B, Lq, H, D]
    k_store = torch.randn(1, 6 * S, heads, head_dim, device=device, dtype=dtype)  # [B, slots*S, H, D]
    v_store = torch.randn(1, 6 * S, heads, head_dim, device=device, dtype=dtype)

    backends = {name: get_backend(name) for name in ("torch", "triton")}
    outputs = {name: b.ring_attention(q, k_store, v_store, view) for name, b in backends.items()}
    err = ((outputs["triton"].float() - outputs["torch"].float()).norm() / outputs["torch"].float().norm()).item()
    flop = 4 * q.shape[1] * view.key_tokens * head_dim * heads
    results = {}
    for name, b in backends.items():
        secs = statistics.median(timed(lambda b=b: b.ring_attention(q, k_store, v_store, view), args.repeats, device))
        results[name] = {"seconds": secs, "tflops": flop / secs / 1e12}
        print(f"{name:>7}: {secs * 1e3:9.3f} ms  {flop / secs / 1e12:8.1f} TFLOP/s", flush=True)
    speedup = results["torch"]["seconds"] / results["triton"]["seconds"]
    print(f"triton vs torch (gather + RoPE + SDPA): {speedup:.2f}x; rel err {err:.2e}")
    if args.out:
        record = {
            "command": "python bench/ring_attention.py " + " ".join(argv or []),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "shape": {"Lq": q.shape[1], "Lk": view.key_tokens, "heads": heads, "head_dim": head_dim, "dtype": args.dtype},
            "rel_err_triton_vs_torch": err,
            "speedup": speedup,
            "backends": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
