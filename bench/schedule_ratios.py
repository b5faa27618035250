"""Measured vs FLOP-predicted latency ratios of schedules, run in one process.

    python bench/schedule_ratios.py [--height 512 --width 512 --frames 81 --repeats 2]

CPU by default: a small model on a grid large enough that attention dominates (512x512 video = 64x64
latent = 1024 tokens per frame at high res, 256 at the 2x-down low res). On CPU only the ratios mean
anything; absolute seconds depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from histream_engine import Engine, WanConfig, WanDiT, flops

SCHEDULES = ("self_forcing", "histream", "histream_plus")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="tiny")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    cfg = WanConfig.from_name(args.model)
    dit = WanDiT(cfg).eval().requires_grad_(False)
    engine = Engine(dit)
    prompt = torch.randn(1, cfg.text_len, cfg.text_dim)  # [1, 512, text_dim]
    engine.generate(prompt, 9, args.height, args.width, schedule="histream")  # warm-up, not timed

    rows = {}
    for name in SCHEDULES:
        per_frame = []
        for _ in range(args.repeats):
            result = engine.generate(prompt, args.frames, args.height, args.width, schedule=name)
            per_frame.append(result.seconds_per_frame)
        model = flops.schedule_flops(cfg, name, args.frames, args.height, args.width)
        rows[name] = {
            "seconds_per_frame": statistics.median(per_frame),
            "flops_per_frame": sum(c.total for c in model) / sum(c.video_frames for c in model),
            "per_chunk_seconds": [round(c.seconds, 4) for c in result.chunks],
        }
        print(f"{name:>14}: {rows[name]['seconds_per_frame'] * 1e3:8.1f} ms/frame  chunks {rows[name]['per_chunk_seconds']}", flush=True)

    base = rows["self_forcing"]
    print(f"\n{'schedule':>14}  {'ms/frame':>9}  {'measured speedup':>16}  {'FLOP-model speedup':>18}  {'measured/model':>14}")
    for name, r in rows.items():
        measured = base["seconds_per_frame"] / r["seconds_per_frame"]
        predicted = base["flops_per_frame"] / r["flops_per_frame"]
        r["measured_speedup"], r["predicted_speedup"] = measured, predicted
        print(f"{name:>14}  {r['seconds_per_frame'] * 1e3:9.1f}  {measured:16.2f}  {predicted:18.2f}  {measured / predicted:14.2f}")
    if args.out:
        record = {
            "command": "python bench/schedule_ratios.py " + " ".join(argv or []),
            "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "model": args.model,
            "video": {"frames": args.frames, "height": args.height, "width": args.width},
            "schedules": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
