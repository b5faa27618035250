"""Decoder-only timing: the Wan VAE against TAEHV (taew2_1's layout), random weights, several resolutions, one run.

    python -m bench.vae --resolutions 256x256 512x512 [--dtype float32] [--out bench/results/DATE-DEVICE-vae.json]

Per decoder and resolution: the first latent frame decoded alone (priming the causal history, not timed), then
``--latent-frames`` steady latent frames as one chunk, timed (median of ``--repeats``); s/frame is per video frame
of that chunk. The FLOP model's count is printed beside it. A JSON record and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from histream_engine import TAEHV, VAEConfig, WanVAE, flops

from .report import environment, write_json

RESULTS = Path(__file__).parent / "results"
DECODERS = {"wan": lambda: WanVAE(VAEConfig()), "tae": lambda: TAEHV()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decoder(decoder, height: int, width: int, latent_frames: int, repeats: int) -> float:
    """Median seconds per video frame of a steady chunk of ``latent_frames``."""
    device = decoder.device
    shape = (1, decoder.latent_channels, latent_frames, height // 8, width // 8)  # [B, 16, F, h, w]
    times = []
    for _ in range(repeats):
        state = decoder.new_state()
        decoder.decode(torch.randn(1, decoder.latent_channels, 1, height // 8, width // 8, device=device), state)
        z = torch.randn(shape, device=device)
        _sync(device)
        t0 = time.perf_counter()
        decoder.decode(z, state)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (4 * latent_frames)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", nargs="+", default=["256x256", "512x512"], metavar="WxH")
    p.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=list(DECODERS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--latent-frames", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    sizes = []
    for r in args.resolutions:
        w, _, h = r.partition("x")
        if not (w.isdigit() and h.isdigit()) or int(w) % 8 or int(h) % 8 or not int(w) or not int(h):
            p.exit(2, f"{p.prog}: error: resolution {r!r} is not WxH with multiples of 8\n")
        sizes.append((int(w), int(h)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    rows = []
    for name in args.decoders:
        torch.manual_seed(0)
        with torch.device(device):
            decoder = DECODERS[name]()
        decoder = decoder.to(getattr(torch, args.dtype)).eval().requires_grad_(False)
        if device.type == "cuda":
            decoder = decoder.to(memory_format=torch.channels_last)
        for w, h in sizes:
            count = flops.vae_flops_per_frame(h, w) if name == "wan" else flops.taehv_flops_per_frame(h, w)
            spf = time_decoder(decoder, h, w, args.latent_frames, args.repeats)
            rows.append({"decoder": decoder.name, "width": w, "height": h, "seconds_per_frame": spf,
                         "flops_per_frame": count, "achieved_gflops": count / spf / 1e9})
            print(f"{decoder.name:>6} {w}x{h}: {spf:.4f} s/frame, {count / 1e9:.1f} GFLOP/frame, {count / spf / 1e9:.1f} GFLOP/s", flush=True)
    record = {"command": "python -m bench.vae " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "environment": env, "dtype": args.dtype,
              "latent_frames": args.latent_frames, "repeats": args.repeats, "rows": rows}
    slug = "cpu" if device.type == "cpu" else env["device"].replace(" ", "-")
    out = args.out or RESULTS / f"{record['date']}-{slug}-vae.json"
    write_json(record, out)
    lines = [f"# Decoders alone, {env['device']}, {args.dtype}", "", f"`{record['command']}`", "",
             "| decoder | size | s/frame | GFLOP/frame | GFLOP/s | Wan / TAEHV time |", "|---|---|---|---|---|---|"]
    by = {(r["decoder"], r["width"], r["height"]): r for r in rows}
    for r in rows:
        wan = by.get(("wan", r["width"], r["height"]))
        ratio = f"{wan['seconds_per_frame'] / r['seconds_per_frame']:.1f}x" if wan and r["decoder"] == "taehv" else ""
        lines.append(f"| {r['decoder']} | {r['width']}x{r['height']} | {r['seconds_per_frame']:.4f} | {r['flops_per_frame'] / 1e9:.1f} | "
                     f"{r['achieved_gflops']:.1f} | {ratio} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
