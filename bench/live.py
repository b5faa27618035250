"""``histream bench --live``: a soak of one unbounded stream, with a prompt switch every K chunks.

Reports per-chunk latency over time (median of the first and the last tenth of the chunks, and their drift), the
cost of a switch (its own seconds and extra forwards, and the chunk that follows), resident memory (RSS) at the
start and the end, and the cache bytes. The stream's memory must stay flat and its per-chunk cost constant: that
is what an anchor plus a sliding window promises.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from histream_engine import SCHEDULES, Engine, EngineConfig, WanConfig
from histream_engine.cli_parser import attention_name, in_flags, make_parser, number
from histream_engine.model.dit import initialized_dit
from histream_engine.output_paths import check_output_file
from histream_engine.runtime.video_request import check_video_request

from .presets import PRESETS
from histream_engine.provenance import environment

from .report import command_line, default_out, write_json

def rss_bytes() -> int:
    """Resident memory now (Linux /proc), else the peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


MIN_CHUNKS = 12  # a first and a last tenth of at least one chunk each, after the warm-up chunk
MIN_MINUTES = 1.0  # a soak by time; a shorter run is a --chunks run


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("histream bench --live", __doc__.splitlines()[0])
    p.add_argument("--live", action="store_true", help="this soak (as opposed to the latency suite)")
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS), help="the model, size and dtype (histream bench --help)")
    p.add_argument("--schedule", default="histream_plus", choices=sorted(SCHEDULES), help="run with positions='window'")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--chunks", type=number(int, MIN_CHUNKS, " (a first and a last tenth)"), default=1000, help="chunks to stream")
    length.add_argument("--minutes", type=number(float, MIN_MINUTES, " (shorter soaks: --chunks)"),
                        help=f"stream for this long instead of --chunks (and at least {MIN_CHUNKS} chunks)")
    p.add_argument("--switch-every", type=number(int, 0), default=100, help="a prompt switch every K chunks (0: none)")
    p.add_argument("--no-recache", dest="recache", action="store_false", help="switch only the text K/V")
    p.add_argument("--height", type=number(int, 1), help="default: the preset's")
    p.add_argument("--width", type=number(int, 1), help="default: the preset's")
    p.add_argument("--attention", default="torch", type=attention_name("bench --live", False), help="attention backend")
    p.add_argument("--cuda-graphs", action="store_true", help="replay steady-state chunks as CUDA graphs (GPU only)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the preset's")
    p.add_argument("--out", type=Path, help="JSON path; default: histream-bench-<date>-<device>-live-<preset>.json in the working folder")
    return p


def check_arguments(parser: argparse.ArgumentParser, args, height: int, width: int, sched) -> None:
    """What can be refused before a model is built and a soak of minutes runs: the size, the output file."""
    try:
        check_video_request(None, height, width, EngineConfig().chunk_size, sched)
        if args.out is not None:
            check_output_file(args.out, (".json",), "--out")
    except ValueError as e:  # OutputPathError among them
        parser.error(in_flags(e, parser))


def tenth_medians(seconds: list[float]) -> tuple[float, float]:
    n = max(1, len(seconds) // 10)
    return statistics.median(seconds[1 : 1 + n]), statistics.median(seconds[-n:])  # chunk 0 is the warm-up


def tenths(seconds: list[float]) -> list[float]:
    """The median chunk time of each tenth of the stream (chunk 0, the warm-up, left out): a trend shows as a rise
    across them, where a busy machine shows as scattered tenths."""
    rest = seconds[1:]
    n = max(1, len(rest) // 10)
    return [statistics.median(rest[i * n : (i + 1) * n]) for i in range(min(10, len(rest) // n))]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    height = preset.height if args.height is None else args.height
    width = preset.width if args.width is None else args.width
    sched = SCHEDULES[args.schedule].replace(positions="window")
    check_arguments(parser, args, height, width, sched)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.cuda_graphs and device.type != "cuda":
        parser.error("--cuda-graphs needs a CUDA device and none is visible; drop the flag on this machine")
    dtype = getattr(torch, args.dtype or preset.dtype)
    cfg = WanConfig.from_name(preset.model)
    dit = initialized_dit(cfg, dtype, device)
    engine = Engine(dit, EngineConfig(attention=args.attention, cuda_graphs=args.cuda_graphs))
    gen = torch.Generator().manual_seed(0)

    def prompt():
        p = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen).to(device, dtype)  # [1, 512, text_dim]
        p[:, 128:] = 0
        return p

    env = environment(device)
    until = time.monotonic() + 60 * args.minutes if args.minutes else None
    print(f"histream bench --live: {args.schedule} (window positions) at {width}x{height}, {preset.model}, {env['device']}, "
          + (f"{args.minutes} minutes" if until else f"{args.chunks} chunks") + f", a switch every {args.switch_every}", flush=True)
    stream = engine.stream(prompt(), None, height, width, schedule=sched, seed=0)
    seconds, switches, rss = [], [], {"start": rss_bytes()}
    cache_bytes = latent_bytes = 0
    t_start = time.perf_counter()
    for chunk in stream:
        seconds.append(chunk.seconds)
        cache_bytes, latent_bytes = chunk.cache_bytes, chunk.latent_bytes
        if chunk.prompt_switch is not None:
            s = chunk.prompt_switch
            switches.append({"chunk": chunk.index, "seconds": s.seconds, "forwards": s.forwards, "chunk_seconds": chunk.seconds})
        if chunk.index == 10:
            rss["after_10_chunks"] = rss_bytes()
        done = chunk.index + 1 >= MIN_CHUNKS and time.monotonic() >= until if until else chunk.index + 1 >= args.chunks
        if done:
            break
        if args.switch_every and (chunk.index + 1) % args.switch_every == 0:
            stream.set_prompt(prompt(), recache=args.recache)
        if chunk.index % 1000 == 999:
            print(f"  chunk {chunk.index + 1}: {chunk.seconds * 1e3:.1f} ms, rss {rss_bytes() / 2**20:.0f} MiB", flush=True)
    stream.close()
    rss["end"] = rss_bytes()
    first, last = tenth_medians(seconds)
    steady = statistics.median(seconds[1:])
    switch_chunks = {s["chunk"] for s in switches}
    record = {
        "command": command_line("histream bench", argv),
        "date": time.strftime("%Y-%m-%d"),
        "environment": env,
        "model": preset.model,
        "schedule": args.schedule,
        "positions": "window",
        "video": {"height": height, "width": width},
        "dtype": str(dtype).removeprefix("torch."),
        "chunks": len(seconds),
        "wall_seconds": time.perf_counter() - t_start,
        "chunk_seconds": {"first_tenth_median": first, "last_tenth_median": last, "drift": last / first - 1,
                          "steady_median": steady, "tenth_medians": tenths(seconds),
                          "after_switch_median": statistics.median([seconds[c] for c in switch_chunks]) if switches else None},
        "switches": {"count": len(switches), "recache": args.recache,
                     "median_seconds": statistics.median([s["seconds"] for s in switches]) if switches else None,
                     "forwards": switches[0]["forwards"] if switches else None},
        "rss_bytes": rss,
        "rss_growth_after_warmup_bytes": rss["end"] - rss.get("after_10_chunks", rss["start"]),
        "cache_bytes": cache_bytes,
        "latent_bytes": latent_bytes,
    }
    slug = "cpu" if device.type == "cpu" else env["device"].replace(" ", "-")
    out = args.out or default_out(record["date"], slug, f"live-{preset.name}")
    write_json(record, out)
    cs = record["chunk_seconds"]
    print("median ms of each tenth: " + " ".join(f"{1e3 * t:.2f}" for t in cs["tenth_medians"]))
    print(f"chunks {len(seconds)}: first tenth {first * 1e3:.2f} ms, last tenth {last * 1e3:.2f} ms, drift {100 * cs['drift']:+.1f}%; "
          f"{len(switches)} switches, {1e3 * (record['switches']['median_seconds'] or 0):.2f} ms each; "
          f"rss {rss['start'] / 2**20:.0f} -> {rss['end'] / 2**20:.0f} MiB; cache {cache_bytes} B + latents {latent_bytes} B")
    print(f"wrote {out}")
    return 0
