"""Decoder-only timing: the Wan VAE against TAEHV (taew2_1's layout), random weights, several resolutions, one run.

    python -m bench.vae --resolutions 256x256 512x512 [--dtype float32] [--tae taew2_1.pth] [--out bench/results/DATE-DEVICE-vae.json]

Per decoder and resolution: the first latent frame decoded alone (priming the causal history, not timed), then
``--latent-frames`` steady latent frames as one chunk, timed (median of ``--repeats``); s/frame is per video frame
of that chunk. The FLOP model's count is printed beside it. A JSON record and a markdown table beside it.

``build_decoder`` is the one place the bench (this script and ``histream bench --vae``) makes a decoder: TAEHV goes
through the loader's own ``taehv_from_state`` (random weights in taew2_1's layout, or ``--tae``'s file through
``load_taehv``), so its dtype and memory layout (channels-last weights on a GPU) are what ``Engine.from_pretrained``
runs and a timed decode pays for no layout conversion the engine would not.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from histream_engine import TAEHV, CheckpointError, VAEConfig, WanVAE, flops
from histream_engine.cli_parser import make_parser
from histream_engine.model.decoder import VAE_SPACE_STRIDE
from histream_engine.output_paths import OutputPathError, check_output_file
from histream_engine.taehv_checkpoint import load_taehv, taehv_from_state

from histream_engine.provenance import environment

from .report import command_line, default_out, write_json

DECODERS = ("wan", "tae")
RANDOM_TAE = "random weights in taew2_1's layout"


def build_decoder(name: str, dtype: torch.dtype, device: torch.device, tae_path: Path | None = None, wan_dim: int = 96,
                  seed: int = 0) -> WanVAE | TAEHV:
    """``wan``: the Wan VAE of width ``wan_dim``, random weights, as ``load_vae`` leaves a loaded one (the Wan VAE's 3D
    convs keep the default layout); ``tae``: TAEHV from ``tae_path`` or random weights, through the loader."""
    torch.manual_seed(seed)
    if name == "tae":
        if tae_path is not None:
            return load_taehv(tae_path, dtype, device)  # refuses a bad file with the loader's message (CheckpointError)
        return taehv_from_state(TAEHV().state_dict(), Path(RANDOM_TAE), dtype, device)
    if name != "wan":
        raise ValueError(f"unknown decoder {name!r}; choose one of {DECODERS}")
    with torch.device(device):  # the full-width Wan VAE's init is seconds on a CPU: make it where it runs
        vae = WanVAE(VAEConfig(dim=wan_dim))
    return vae.to(dtype).eval().requires_grad_(False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decoder(decoder, height: int, width: int, latent_frames: int, repeats: int) -> float:
    """Median seconds per video frame of a steady chunk of ``latent_frames``."""
    device = decoder.device
    shape = (1, decoder.latent_channels, latent_frames, height // VAE_SPACE_STRIDE, width // VAE_SPACE_STRIDE)  # [B, 16, F, h, w]
    times = []
    for _ in range(repeats):
        state = decoder.new_state()
        decoder.decode(torch.randn(1, decoder.latent_channels, 1, height // VAE_SPACE_STRIDE, width // VAE_SPACE_STRIDE, device=device), state)
        z = torch.randn(shape, device=device)
        _sync(device)
        t0 = time.perf_counter()
        decoder.decode(z, state)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (4 * latent_frames)


def main(argv=None) -> int:
    p = make_parser("python -m bench.vae", __doc__)
    p.add_argument("--resolutions", nargs="+", default=["256x256", "512x512"], metavar="WxH", help="video sizes to decode")
    p.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS, help="the decoders to time")
    p.add_argument("--tae", type=Path, metavar="PATH", help="TAEHV weights (taew2_1.pth or .safetensors) instead of random ones")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the decoders' dtype")
    p.add_argument("--latent-frames", type=int, default=1, help="latent frames decoded per timed call")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per decoder and size")
    p.add_argument("--out", type=Path, help="JSON path (a .md table beside it); default: histream-bench-<date>-<device>-vae.json "
                   "in the working folder")
    args = p.parse_args(argv)
    sizes = []
    for r in args.resolutions:
        w, _, h = r.partition("x")
        if not (w.isdigit() and h.isdigit()) or int(w) % 8 or int(h) % 8 or not int(w) or not int(h):
            p.exit(2, f"{p.prog}: error: resolution {r!r} is not WxH with multiples of 8\n")
        sizes.append((int(w), int(h)))
    if args.tae is not None and "tae" not in args.decoders:
        p.exit(2, f"{p.prog}: error: --tae names TAEHV weights, but --decoders {' '.join(args.decoders)} leaves TAEHV out\n")
    if args.out is not None:  # checked now, not after minutes of decoding
        try:
            check_output_file(args.out, (".json",), "--out")
        except OutputPathError as e:
            p.exit(2, f"{p.prog}: error: {e}\n")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    decoders = {}
    for name in args.decoders:  # all built (a bad --tae refused) before anything is timed
        try:
            decoders[name] = build_decoder(name, getattr(torch, args.dtype), device, args.tae)
        except CheckpointError as e:
            p.exit(2, f"{p.prog}: error: --tae: {' '.join(str(e).split())}\n")  # the loader's message, on one line
    rows = []
    for name, decoder in decoders.items():
        for w, h in sizes:
            count = flops.vae_flops_per_frame(h, w) if name == "wan" else flops.taehv_flops_per_frame(h, w)
            spf = time_decoder(decoder, h, w, args.latent_frames, args.repeats)
            rows.append({"decoder": decoder.name, "width": w, "height": h, "seconds_per_frame": spf,
                         "flops_per_frame": count, "achieved_gflops": count / spf / 1e9})
            print(f"{decoder.name:>6} {w}x{h}: {spf:.4f} s/frame, {count / 1e9:.1f} GFLOP/frame, {count / spf / 1e9:.1f} GFLOP/s", flush=True)
    record = {"command": command_line("python -m bench.vae", argv),
              "date": time.strftime("%Y-%m-%d"), "environment": env, "dtype": args.dtype,
              "tae_weights": str(args.tae) if args.tae else RANDOM_TAE,
              "latent_frames": args.latent_frames, "repeats": args.repeats, "rows": rows}
    slug = "cpu" if device.type == "cpu" else env["device"].replace(" ", "-")
    out = args.out or default_out(record["date"], slug, "vae")
    write_json(record, out)
    lines = [f"# Decoders alone, {env['device']}, {args.dtype}", "", f"`{record['command']}`", "",
             f"Commit {env['git_commit']}, {record['date']}; TAEHV: {record['tae_weights']}.", "",
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
