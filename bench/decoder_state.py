"""The Wan VAE's saved stream state: its size beside the causal history it stands for, and what loading it costs.

    python -m bench.decoder_state [--resolution 256x256] [--repeats 1] [--out bench/results/DATE-DEVICE-decoder-state.json]

Counted, not run (meta tensors), for the 1.3B's Wan VAE (``VAEConfig()``) at 832x480 and 1920x1088, batch 1, bf16:
the saved state's bytes once the stream is past the decoder's reach (``state_nbytes_at``), the causal history a
decoding stream holds (``cache_shapes``), the FLOPs of loading the state (``flops.vae_replay_flops``: the kept latent
frames decoded again) and of decoding one frame. Timed here, in fp32 at ``--resolution``, for two tiny Wan VAEs (the
demo's ``VAEConfig(dim=16, num_res_blocks=0)``, and ``VAEConfig(dim=8)``, the Wan2.1 layout): ``load_state`` of a
state 20 chunks into a stream (random latents and weights: the work does not depend on them), median of
``--repeats``, beside one chunk's decode.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from histream_engine import VAEConfig, WanVAE, flops
from histream_engine.model.decoder import VAE_SPACE_STRIDE, state_nbytes_at
from histream_engine.model.vae import LATENT_FRAMES_PER_PASS
from histream_engine.provenance import environment

from .report import check_json_out_or_exit, command_line, size_or_exit, write_record

RESULTS = Path(__file__).parent / "results"
SIZES = ((832, 480), (1920, 1088))
TINY = {"demo (dim 16, no residual blocks)": VAEConfig(dim=16, num_res_blocks=0), "dim 8 (Wan2.1 layout)": VAEConfig(dim=8)}
CHUNKS_IN = 20  # the stream the timed state comes from: far past either tiny VAE's reach


def counted() -> list[dict]:
    """The 1.3B's Wan VAE at each size: bytes saved and held, FLOPs of a load and of a frame."""
    with torch.device("meta"):
        vae = WanVAE(VAEConfig())
    rows = []
    for w, h in SIZES:
        lh, lw = h // VAE_SPACE_STRIDE, w // VAE_SPACE_STRIDE
        rows.append({"width": w, "height": h, "kept_latent_frames": vae.state_shapes(1, lh, lw)["latents"][2],
                     "saved_bytes": state_nbytes_at(vae, 1, lh, lw, dtype=torch.bfloat16),
                     "history_bytes": 2 * sum(math.prod(s) for s in vae.cache_shapes(1, lh, lw).values()),
                     "replay_flops": flops.vae_replay_flops(h, w), "flops_per_frame": flops.vae_flops_per_frame(h, w)})
    return rows


def timed(config: VAEConfig, width: int, height: int, repeats: int) -> dict:
    """Seconds of ``load_state`` on a state ``CHUNKS_IN`` chunks into a stream, and of one chunk's decode."""
    torch.manual_seed(0)
    vae = WanVAE(config).eval()
    lh, lw = height // VAE_SPACE_STRIDE, width // VAE_SPACE_STRIDE
    with torch.device("meta"):  # the state's dict, from a stream decoded on meta tensors (shapes only)
        twin = WanVAE(config)
    state = twin.new_state()
    for _ in range(CHUNKS_IN):
        twin.decode(torch.empty(1, 16, LATENT_FRAMES_PER_PASS, lh, lw, device="meta"), state)
    meta = twin.state_tensors(state)[1]
    tensors = {"latents": torch.randn(1, 16, sum(meta["calls"]), lh, lw)}  # [1, 16, kept, h, w]
    loads = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loaded = vae.load_state(tensors, meta)
        loads.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    vae.decode(torch.randn(1, 16, LATENT_FRAMES_PER_PASS, lh, lw), loaded)
    chunk = time.perf_counter() - t0
    return {"reach": vae.reach, "kept_latent_frames": sum(meta["calls"]), "load_state_seconds": statistics.median(loads),
            "chunk_decode_seconds": chunk, "saved_bytes": tensors["latents"].nbytes,
            "history_bytes": sum(t.nbytes for t in loaded.frames.values())}


def markdown(record: dict) -> str:
    lines = [f"# The Wan VAE's saved stream state, {record['environment']['device']}", "", f"`{record['command']}`", "",
             f"Commit {record['environment']['git_commit']}, {record['date']}.", "",
             "Counted for the 1.3B's Wan VAE (`VAEConfig()`), batch 1, bf16, a stream decoded a chunk (3 latent frames) at a time:", "",
             "| size | kept latent frames | saved | history it stands for | load: decoder TFLOP | = frames of decode |",
             "|---|---|---|---|---|---|"]
    for r in record["counted"]:
        lines.append(f"| {r['width']}x{r['height']} | {r['kept_latent_frames']} | {r['saved_bytes']:,} B | {r['history_bytes']:,} B | "
                     f"{r['replay_flops'] / 1e12:.1f} | {r['replay_flops'] / r['flops_per_frame']:.0f} |")
    lines += ["", f"Timed here, fp32, {record['resolution']}, a state {CHUNKS_IN} chunks into a stream "
              f"(median of {record['repeats']}):", "",
              "| tiny Wan VAE | reach | kept | saved | history | load_state | one chunk's decode |", "|---|---|---|---|---|---|---|"]
    for name, r in record["timed"].items():
        lines.append(f"| {name} | {r['reach']} | {r['kept_latent_frames']} | {r['saved_bytes']:,} B | {r['history_bytes']:,} B | "
                     f"{r['load_state_seconds']:.2f} s | {r['chunk_decode_seconds']:.2f} s |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decoder_state", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", default="256x256", metavar="WxH")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    w, h = size_or_exit(p, "--resolution", args.resolution, 8)
    if args.repeats < 1:
        p.exit(2, f"{p.prog}: error: --repeats must be at least 1\n")
    check_json_out_or_exit(p, args.out)
    env = environment(torch.device("cpu"))
    record = {"command": command_line("python -m bench.decoder_state", argv),
              "date": time.strftime("%Y-%m-%d"), "environment": env, "resolution": args.resolution,
              "repeats": args.repeats, "counted": counted(), "timed": {}}
    for name, config in TINY.items():
        record["timed"][name] = timed(config, int(w), int(h), args.repeats)
        print(name, record["timed"][name], flush=True)
    out = args.out or RESULTS / f"{record['date']}-cpu-decoder-state.json"
    write_record(record, out, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
