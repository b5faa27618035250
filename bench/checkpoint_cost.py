"""What a server's per-chunk checkpoint (docs/serve.md, "Streams that survive") weighs and costs.

    python -m bench.checkpoint_cost [--chunks 12] [--size 64x64] [--out bench/results/DATE-cpu-checkpoint-cost.json]

Counted, not run, from the engine's own accounting: the bytes of one checkpoint (``VideoStream.state()`` without the
rings, as ``StreamState.to_bytes`` writes it) for the 1.3B model in bf16 on the histream schedule at 832x480 and
1920x1088, with the Wan VAE's and with TAEHV's decoder state (``runtime.stream_state.state_nbytes`` plus
``model.decoder.state_nbytes_at``, both held to real states' bytes by tests).

Timed here, on the tiny demo model at ``--size``: two streams of the same request run in one process, interleaved chunk
by chunk (so load on a shared machine falls on both alike), one taking a checkpoint at every boundary as the serving
session does (``state()`` then ``to_bytes()``), the other none; each chunk's wall time, and the checkpoint's own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from histream_engine import VAEConfig, WanVAE
from histream_engine.config import WanConfig
from histream_engine.host import HostRequest, tiny_demo
from histream_engine.model.decoder import VAE_SPACE_STRIDE, state_nbytes_at
from histream_engine.model.taehv import TAEHV
from histream_engine.provenance import environment
from histream_engine.runtime.denoise.schedules import SCHEDULES
from histream_engine.runtime.stream_state import state_nbytes

from .report import check_json_out_or_exit, command_line, size_or_exit, write_record

RESULTS = Path(__file__).parent / "results"
SIZES = ((832, 480), (1920, 1088))


def counted() -> list[dict]:
    """One checkpoint's bytes for the 1.3B (bf16, a 512-row prompt, on a GPU's generator), per size and decoder."""
    config = WanConfig.from_name("wan2.1-1.3b")
    with torch.device("meta"):
        decoders = {"wan": WanVAE(VAEConfig()), "taehv": TAEHV()}
    rows = []
    for w, h in SIZES:
        lh, lw = h // VAE_SPACE_STRIDE, w // VAE_SPACE_STRIDE
        for name, decoder in decoders.items():
            decoder_bytes = state_nbytes_at(decoder, 1, lh, lw, dtype=torch.bfloat16)
            parts = state_nbytes(config, torch.bfloat16, h, w, SCHEDULES["histream"], decoder_bytes=decoder_bytes)
            rows.append({"width": w, "height": h, "decoder": name, "checkpoint_bytes": parts["without_rings"],
                         "latents_bytes": parts["part_latents"], "prompt_bytes": parts["part_prompt_embeds"],
                         "decoder_bytes": decoder_bytes, "with_rings_bytes": parts["with_rings"]})
    return rows


def timed(chunks: int, width: int, height: int) -> dict:
    host = tiny_demo("cpu", "torch", 0)
    frames = 4 * 3 * chunks - 3  # chunks of 3 latent frames: 9 frames, then 12 a chunk
    request = HostRequest("", "", frames, height, width, "histream", 0)
    with_cp, without = host.results(request), host.results(request)
    rows = {"with": [], "without": [], "checkpoint": [], "bytes": []}
    try:
        for _ in range(chunks):
            t0 = time.perf_counter()
            next(without)
            rows["without"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            next(with_cp)
            t1 = time.perf_counter()
            data = with_cp.state().to_bytes()
            t2 = time.perf_counter()
            rows["with"].append(t2 - t0)
            rows["checkpoint"].append(t2 - t1)
            rows["bytes"].append(len(data))
    finally:
        with_cp.close()
        without.close()
    later = slice(1, None)  # chunk 0 runs at its own schedule and warms the allocator: the steady chunks
    return {"width": width, "height": height, "chunks": chunks,
            "ms_per_chunk_with": 1e3 * statistics.median(rows["with"][later]),
            "ms_per_chunk_without": 1e3 * statistics.median(rows["without"][later]),
            "checkpoint_ms": 1e3 * statistics.median(rows["checkpoint"][later]),
            "checkpoint_ms_max": 1e3 * max(rows["checkpoint"]), "checkpoint_bytes": rows["bytes"][-1],
            "per_chunk_seconds": rows}


def markdown(record: dict) -> str:
    t = record["timed"]
    lines = [f"# A server's per-chunk checkpoint, {record['device']}", "", f"`{record['command']}`", "",
             f"Commit {record['environment']['git_commit']}, {record['date']}.", "",
             "Counted (the engine's accounting) for the 1.3B model, bf16, histream schedule, batch 1, a 512-row prompt, "
             "the window full: one checkpoint, the stream's state without its rings.", "",
             "| size | decoder | checkpoint | latents | prompt | decoder state | (with the rings) |", "|---|---|---|---|---|---|---|"]
    for r in record["counted"]:
        lines.append(f"| {r['width']}x{r['height']} | {r['decoder']} | {r['checkpoint_bytes'] / 2**20:.1f} MiB | "
                     f"{r['latents_bytes'] / 2**20:.1f} MiB | {r['prompt_bytes'] / 2**20:.1f} MiB | "
                     f"{r['decoder_bytes'] / 2**20:.1f} MiB | {r['with_rings_bytes'] / 2**30:.1f} GiB |")
    lines += ["", f"Timed here: the tiny demo model at {t['width']}x{t['height']}, {t['chunks']} chunks, two streams of "
              "the same request interleaved in one process (medians over chunks 1 on):", "",
              "| ms/chunk without checkpoints | ms/chunk with | the checkpoint itself (median, max) | its bytes |",
              "|---|---|---|---|",
              f"| {t['ms_per_chunk_without']:.1f} | {t['ms_per_chunk_with']:.1f} | {t['checkpoint_ms']:.2f}, "
              f"{t['checkpoint_ms_max']:.2f} | {t['checkpoint_bytes']:,} B |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.checkpoint_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=12)
    p.add_argument("--size", default="64x64", metavar="WxH")
    p.add_argument("--device-note", default="CPU, 2 cores, no GPU", help="how the results name this machine")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    w, h = size_or_exit(p, "--size", args.size, 16)
    if args.chunks < 2:
        p.exit(2, f"{p.prog}: error: --chunks must be at least 2\n")
    check_json_out_or_exit(p, args.out)
    record = {"command": command_line("python -m bench.checkpoint_cost", argv),
              "date": time.strftime("%Y-%m-%d"), "device": args.device_note, "environment": environment(torch.device("cpu")),
              "counted": counted(), "timed": timed(args.chunks, int(w), int(h))}
    out = args.out or RESULTS / f"{record['date']}-cpu-checkpoint-cost.json"
    write_record(record, out, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
