"""The ``histream`` command line."""

from __future__ import annotations

import argparse
import sys

import torch

from .model import WanDiT
from .runtime import SCHEDULES, Engine, EngineConfig
from .runtime.engine import ChunkResult


TABLE = (
    ("chunk", 5), ("low", 3), ("high", 4), ("recache", 7), ("frames", 6),
    ("keys", 8), ("cache MiB", 9), ("seconds", 8), ("ms/frame", 9),
)


def table_header() -> str:
    return "  ".join(name.rjust(w) for name, w in TABLE)


def table_row(c: ChunkResult) -> str:
    cells = (
        c.index, c.forwards["low"], c.forwards["high"], sum(c.recache.values()), c.video_frames,
        c.tokens_attended, f"{c.cache_bytes / 2**20:.2f}", f"{c.seconds:.3f}", f"{1e3 * c.seconds / c.video_frames:.1f}",
    )
    return "  ".join(str(v).rjust(w) for v, (_, w) in zip(cells, TABLE))


def run_demo(args) -> int:
    """End to end on the embedded ``tiny`` model with random weights: no downloads, seconds on a CPU."""
    torch.manual_seed(args.seed)
    dit = WanDiT("tiny").eval().requires_grad_(False)
    prompt = torch.zeros(1, dit.config.text_len, dit.config.text_dim)  # [1, 512, text_dim], zero-padded like T5 output
    prompt[:, :12] = torch.randn(1, 12, dit.config.text_dim)
    engine = Engine(dit, EngineConfig(attention=args.attention))
    print(
        f"histream demo: tiny Wan DiT ({sum(p.numel() for p in dit.parameters()) / 1e6:.2f}M params, random weights), "
        f"{args.frames} frames at {args.width}x{args.height}, schedule {args.schedule}, attention {args.attention}"
    )
    chunks = engine.stream(prompt, args.frames, args.height, args.width, schedule=args.schedule, seed=args.seed)
    print(table_header())
    done: list[ChunkResult] = []
    for chunk in chunks:
        print(table_row(chunk), flush=True)
        done.append(chunk)
    total = sum(c.seconds for c in done)
    frames = sum(c.video_frames for c in done)
    print(f"denoising: {total:.3f} s for {frames} frames = {1e3 * total / frames:.1f} ms/frame (CPU, tiny model)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="histream", description="HiStream inference engine")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded tiny model end to end (CPU, seconds)")
    demo.add_argument("--frames", type=int, default=45, help="video frames, 4k+1 with (frames-1)/4+1 divisible by 3")
    demo.add_argument("--height", type=int, default=256)
    demo.add_argument("--width", type=int, default=256)
    demo.add_argument("--schedule", default="histream", choices=sorted(SCHEDULES))
    demo.add_argument("--attention", default="torch")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=run_demo)
    # Listed for --help; its arguments belong to the suite's own parser (see main).
    sub.add_parser("bench", help="latency-per-frame benchmark suite (histream bench --help)", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench.suite import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"histream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
