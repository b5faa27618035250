"""``histream bench``: latency per frame of every schedule, baselines in the same run, FLOP-model utilisation.

Per schedule: one warm-up video (not timed), then ``repeats`` videos; per-chunk times are medians over
repeats (CUDA events on a GPU). Reported: denoising seconds per output frame (the paper's measure), the
first chunk and the steady state separately, peak GPU memory, achieved TFLOP/s from the FLOP model and
its fraction of the device's peak, and speedups over ``self_forcing`` and the Wan2.1 bidirectional
baseline measured in the same process.

With ``--cuda-graphs`` every video captures its own graphs: its first steady chunk runs eagerly and
the second captures, so the steady-state median (chunks 1 and later) is a replay time once a video has
five or more chunks; ``run_modes`` records how each chunk of the first timed video ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from histream_engine import (SCHEDULES, CheckpointError, Engine, EngineConfig, VAEConfig, WanConfig, attention_backends, dit_backends,
                             flops, init_parallel)
from histream_engine.cli_parser import attention_name, in_flags, make_parser
from histream_engine.model.dit import initialized_dit
from histream_engine.output_paths import OutputPathError, check_output_file
from histream_engine.attention.auto import auto_choices
from histream_engine.runtime.parallel.group import arguments_fingerprint
from histream_engine.model.decoder import VAE_SPACE_STRIDE, VAE_TIME_STRIDE
from histream_engine.runtime.video_request import check_video_request

from .baseline import wan_baseline
from .peer_self_forcing import PeerError, compare, load_peer
from .presets import PRESETS, BenchPreset
from .profile import profile_last_chunk
from histream_engine.provenance import environment

from .report import command_line, default_out, device_peak, fp8_peak, markdown_table, plot_chunks, write_json
from .vae import RANDOM_TAE, build_decoder

def build_parser() -> argparse.ArgumentParser:
    p = make_parser("histream bench", __doc__)
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS),
                   help="the model, size, frames, dtype and repeats: " + "; ".join(f"{n}: {PRESETS[n].description}" for n in sorted(PRESETS)))
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=sorted(SCHEDULES), help="default: every preset schedule")
    p.add_argument("--attention", default="torch", type=attention_name("bench", True), help="attention backend (see histream_engine.attention_backends())")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the preset's")
    p.add_argument("--repeats", type=int, help="timed videos per schedule; default: the preset's")
    p.add_argument("--frames", type=int, help="video frames; default: the preset's")
    p.add_argument("--height", type=int, help="high-resolution height; default: the preset's")
    p.add_argument("--width", type=int, help="high-resolution width; default: the preset's")
    p.add_argument("--no-baseline", action="store_true", help="skip the Wan2.1 bidirectional baseline")
    p.add_argument("--cuda-graphs", action="store_true", help="replay steady-state chunks as CUDA graphs (GPU only; full-cache schedules stay eager)")
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks' elementwise parts")
    p.add_argument("--dit", default="torch", choices=["torch", "onnxruntime", "tensorrt"],
                   help="who runs the DiT: torch, or graphs exported from this preset's random model (histream export --preset MODEL "
                        "--dtype DTYPE --device DEVICE, then histream build-trt for tensorrt)")
    p.add_argument("--engine-dir", type=Path, help="with --dit: the export (onnxruntime) or build-trt (tensorrt) folder")
    p.add_argument("--profile", action="store_true", help="profile each schedule's last chunk (torch.profiler): top ops in the JSON, tables beside it")
    p.add_argument("--vae", nargs="*", choices=["wan", "tae"], metavar="DECODER",
                   help="decode every chunk too, with each DECODER in turn (default both: the Wan VAE of the preset's width and "
                        "taew2_1's TAEHV, random weights); reports each one's s/frame, end-to-end s/frame and its fraction")
    p.add_argument("--tae", type=Path, metavar="PATH",
                   help="TAEHV weights (taew2_1.pth or .safetensors from madebyollin/taehv) for the tae decoder instead of random "
                        "ones; alone it means --vae tae")
    p.add_argument("--prompt-tokens", type=int, default=128,
                   help="real rows of the random prompt, the rest of its 512 zero padding as UMT5 gives (default 128, "
                        "an extended prompt's length; 512 for no padding)")
    p.add_argument("--peer-self-forcing", type=Path, metavar="PATH",
                   help="also time the official Self-Forcing pipeline from this checkout of guandeh17/Self-Forcing "
                        "(yours; never downloaded), interleaved with our schedules on the same weights and noise")
    p.add_argument("--precision", choices=["fp8"], help="fp8: e4m3 ring caches, the FP8 attention core of --attention "
                   "(torch -> torch_fp8, triton/auto -> triton_fp8) and FP8 block linears (docs/fp8.md)")
    p.add_argument("--precision-errors", action="store_true",
                   help="also run one video per precision variant (fp32, bf16, FP8 cache / attention / linears / all) and "
                        "record the latent and per-layer error against fp32 (bench/fp8_error.py)")
    p.add_argument("--live", action="store_true", help="instead: a soak of one unbounded stream with prompt switches (histream bench --live --help)")
    p.add_argument("--parallel", choices=["ulysses"],
                   help="one stream over torchrun's processes: torchrun --nproc-per-node N -m histream_engine bench --parallel "
                        "ulysses ...; records the world size, per-rank FLOPs and the bytes each rank sends (docs/parallel.md)")
    p.add_argument("--out", type=Path, help="JSON path (PNG beside it); default: histream-bench-<date>-<device>-<preset>.json in "
                   "the working folder")
    p.add_argument("--no-plot", action="store_true", help="write no PNG of the per-chunk latency")
    return p


def engine_config(args) -> EngineConfig:
    """The engine settings the command line asks for; ``--precision fp8`` spelled out (``EngineConfig.with_precision``)."""
    settings = dict(cuda_graphs=args.cuda_graphs, compile=args.compile, dit=args.dit,
                    engine_dir=args.engine_dir and str(args.engine_dir), parallel=args.parallel)
    if args.precision:
        return EngineConfig.with_precision(args.precision, attention=args.attention, **settings)
    return EngineConfig(attention=args.attention, **settings)


def check_arguments(parser: argparse.ArgumentParser, args, preset: BenchPreset, frames: int, repeats: int, cfg: WanConfig,
                    ranks: int = 1) -> None:
    """Every argument checked before a model is built (minutes at 1080p): a bad one exits 2 with one line. ``ranks``: the
    world size of a ``--parallel`` run."""

    def fail(msg: str):
        parser.exit(2, f"{parser.prog}: error: {msg}\n")

    if repeats < 1:
        fail(f"--repeats must be >= 1, got {repeats}")
    if not 1 <= args.prompt_tokens <= cfg.text_len:
        fail(f"--prompt-tokens must be in [1, {cfg.text_len}], got {args.prompt_tokens}")
    backends = {name: why for name, _ok, why in attention_backends()}
    if args.attention not in backends:
        fail(f"unknown --attention {args.attention!r}; registered: {sorted(backends)}")
    if backends[args.attention]:
        fail(f"--attention {args.attention} is unavailable here: {backends[args.attention]}")
    for name in args.schedules:
        try:
            check_video_request(frames, preset.height, preset.width, EngineConfig().chunk_size, SCHEDULES[name], cfg.patch_size)
        except ValueError as e:
            fail(in_flags(e, parser))
    runners = {name: why for name, _ok, why in dit_backends()}
    if runners[args.dit]:
        fail(f"--dit {args.dit} is unavailable here: {runners[args.dit]}")
    if (args.dit == "torch") == (args.engine_dir is not None):
        fail("--engine-dir goes with --dit onnxruntime or tensorrt, and they need it")
    if args.dit != "torch" and (args.cuda_graphs or args.compile):
        fail(f"--cuda-graphs and --compile apply to --dit torch, not {args.dit}")
    if args.engine_dir is not None and not args.engine_dir.is_dir():
        fail(f"--engine-dir {args.engine_dir} is not a folder: pass what histream export (onnxruntime) or build-trt (tensorrt) wrote")
    if args.out is not None:
        try:
            check_output_file(args.out, (".json",), "--out")
        except OutputPathError as e:
            fail(str(e))
    if args.precision and args.dit != "torch":
        fail(f"--precision fp8 applies to --dit torch; {args.dit} graphs choose FP8 when built (histream export --fp8)")
    if args.precision:
        try:
            EngineConfig.with_precision(args.precision, attention=args.attention)
        except ValueError as e:
            fail(in_flags(e, parser))
    if args.peer_self_forcing is not None:
        try:
            load_peer(args.peer_self_forcing)
        except PeerError as e:
            fail(f"--peer-self-forcing: {e}")
    if args.tae is not None and args.vae and "tae" not in args.vae:
        fail(f"--tae names TAEHV weights, but --vae {' '.join(args.vae)} leaves TAEHV out; add tae")
    if args.parallel:
        single = [flag for flag, on in (("--dit " + args.dit, args.dit != "torch"), ("--peer-self-forcing", args.peer_self_forcing),
                                         ("--precision-errors", args.precision_errors), ("--profile", args.profile)) if on]
        if single:
            fail(f"--parallel shards the torch runner; {', '.join(single)} runs one process: leave it out of a parallel run")
        if cfg.num_heads % ranks:
            fail(f"--parallel: the {cfg.num_heads} heads of {preset.model} are not divisible by {ranks} ranks")


def run_schedule(engine: Engine, prompt, preset: BenchPreset, frames: int, name: str, repeats: int, peak: float | None = None,
                 fp8: float | None = None) -> dict:
    """Time one schedule; ``peak`` is the device's FLOP/s for the run's dtype, ``fp8`` its e4m3 peak, when known (for one
    GPU: a sequence-parallel run is measured against the peak of all its ranks)."""
    device = engine.dit.device
    cfg = engine.dit.config
    par = engine.parallel
    engine.generate(prompt, frames, preset.height, preset.width, schedule=name)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs, walls = [], []
    sent_before = engine.runner.exchange.bytes_sent if par else 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        runs.append(engine.generate(prompt, frames, preset.height, preset.width, schedule=name))
        walls.append(time.perf_counter() - t0)  # includes decoding, overlapped with denoising on a GPU
    per_chunk = [statistics.median(r.chunks[i].seconds for r in runs) for i in range(len(runs[0].chunks))]
    chunk_frames = [c.video_frames for c in runs[0].chunks]
    seconds_per_frame = statistics.median(r.seconds_per_frame for r in runs)
    text_keys = engine.dit.cross_kv(prompt)[0][0].shape[1]  # the text rows attended: a prompt's padding counts once
    model = flops.schedule_flops(cfg, name, frames, preset.height, preset.width, engine.config.chunk_size, text_keys)
    flops_per_frame = sum(c.total for c in model) / sum(c.video_frames for c in model)
    achieved = flops_per_frame / seconds_per_frame
    config = engine.config
    if config.kv_dtype or config.linear_dtype:  # an FP8 run: utilisation against the peak of its bf16/FP8 mix
        whole = sum((c.denoise + c.recache for c in model), flops.Flops())
        peak = None if peak is None or fp8 is None else flops.precision_peak(
            whole, peak, fp8, config.linear_dtype is not None, engine.attention.capabilities.fp8_core)
    steady = per_chunk[1:] or per_chunk
    ranks = par.world_size if par else 1
    parallel = None
    if par:
        item = torch.empty((), dtype=engine.dit.dtype).element_size()
        modelled = flops.schedule_exchange_bytes(cfg, name, frames, preset.height, preset.width, ranks, item, engine.config.chunk_size)
        parallel = {"mode": engine.config.parallel, "world_size": ranks, "rank": par.rank,
                    "flops_per_rank_per_frame": flops_per_frame / ranks,
                    # counted in Python as the collectives are issued: a replayed CUDA graph issues them without it
                    "bytes_sent_per_chunk": None if engine.config.cuda_graphs else
                    (engine.runner.exchange.bytes_sent - sent_before) / (repeats * len(per_chunk)),
                    "bytes_sent_per_chunk_model": sum(modelled) / len(modelled)}
    return {
        "seconds_per_frame": seconds_per_frame,
        "first_chunk_seconds": per_chunk[0],
        "steady_seconds_per_frame": statistics.median(s / f for s, f in zip(steady, chunk_frames[1:] or chunk_frames)),
        "vae_seconds_per_frame": statistics.median(sum(c.vae_seconds for c in r.chunks) / frames for r in runs) if engine.vae else None,
        "end_to_end_seconds_per_frame": statistics.median(walls) / frames,
        "per_chunk_seconds": per_chunk,
        "per_chunk_flops": [c.total for c in model],
        "flops_per_frame": flops_per_frame,
        "achieved_tflops": achieved / 1e12,
        "peak_fraction": None if peak is None else achieved / (peak * ranks),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "cache_bytes": runs[0].chunks[0].cache_bytes,
        "peak_flops": peak,
        "forwards_per_chunk": [c.forwards for c in runs[0].chunks],
        "run_modes": [c.run_mode for c in runs[0].chunks],
        "recache_per_chunk": [c.recache for c in runs[0].chunks],
        "parallel": parallel,
    }


def compare_decoders(engine: Engine, decoders: dict, prompt, preset: BenchPreset, frames: int, name: str, repeats: int,
                     first: dict) -> dict:
    """Each decoder's decode and end-to-end s/frame on this schedule (the first one's run is ``first``), and the
    decoder's fraction of the end-to-end time (on a GPU the decode overlaps the next chunk's denoising)."""
    out = {}
    for label, decoder in decoders.items():
        engine.vae = decoder
        r = first if not out else run_schedule(engine, prompt, preset, frames, name, repeats)
        out[label] = {"name": decoder.name, "vae_seconds_per_frame": r["vae_seconds_per_frame"],
                      "end_to_end_seconds_per_frame": r["end_to_end_seconds_per_frame"],
                      "decoder_fraction": r["vae_seconds_per_frame"] / r["end_to_end_seconds_per_frame"]}
        print(f"  {'':>14}  decoder {label}: {r['vae_seconds_per_frame']:.4f} s/frame decoding, "
              f"{r['end_to_end_seconds_per_frame']:.4f} s/frame end to end ({100 * out[label]['decoder_fraction']:.0f}%)", flush=True)
    engine.vae = next(iter(decoders.values()))
    return out


@dataclasses.dataclass
class BenchRun:
    """One bench command's settings, resolved from the preset and the flags (and, with --parallel, the rank's group)."""

    args: argparse.Namespace
    par: object  # the ParallelGroup, or None
    preset: BenchPreset
    device: torch.device
    dtype_name: str
    repeats: int
    frames: int
    cfg: WanConfig


def resolve_run(parser, args) -> BenchRun:
    par = None
    if args.parallel:
        par = init_parallel()
        # every rank must run the same command; then the checks below refuse the same things on every rank
        par.agreed("bench commands", arguments_fingerprint(args), lambda: None)
        if not par.is_first:
            sys.stdout = open(os.devnull, "w")  # rank 0 prints and writes the record
    preset = PRESETS[args.preset]
    preset = dataclasses.replace(preset, height=preset.height if args.height is None else args.height,
                                 width=preset.width if args.width is None else args.width)
    device = par.device if par else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.cuda_graphs and device.type != "cuda":
        parser.error("--cuda-graphs needs a CUDA device and none is visible; drop the flag on this machine")
    run = BenchRun(args, par, preset, device, args.dtype or preset.dtype, preset.repeats if args.repeats is None else args.repeats,
                   preset.frames if args.frames is None else args.frames, WanConfig.from_name(preset.model))
    check_arguments(parser, args, preset, run.frames, run.repeats, run.cfg, par.world_size if par else 1)
    return run


def build_decoders(parser, run: BenchRun) -> dict:
    """The decoders to compare, built before the DiT so that a bad --tae file is refused at once."""
    args, decoders = run.args, {}
    wanted = args.vae or (["wan", "tae"] if args.vae is not None else ["tae"] if args.tae is not None else [])
    for name in wanted:
        try:
            decoders[name] = build_decoder(name, getattr(torch, run.dtype_name), run.device, args.tae, run.preset.vae_dim, seed=1)
        except CheckpointError as e:
            parser.exit(2, f"{parser.prog}: error: --tae: {' '.join(str(e).split())}\n")  # the loader's message, on one line
    return decoders


def run_all(run: BenchRun, engine, prompt, env, decoders) -> tuple[dict, dict]:
    """Every asked schedule timed (and profiled, and its decoders compared): (results, profiles) by schedule."""
    args, preset = run.args, run.preset
    schedules, profiles = {}, {}
    for name in args.schedules:
        t0 = time.perf_counter()
        schedules[name] = run_schedule(engine, prompt, preset, run.frames, name, run.repeats,
                                       device_peak(env["device"], run.dtype_name), fp8_peak(env["device"]))
        print(f"  {name:>14}: {schedules[name]['seconds_per_frame']:.4f} s/frame ({time.perf_counter() - t0:.0f} s)", flush=True)
        if decoders:
            schedules[name]["decoders"] = compare_decoders(engine, decoders, prompt, preset, run.frames, name, run.repeats,
                                                           schedules[name])
        if args.profile:
            profiles[name] = profile_last_chunk(engine, prompt, run.frames, preset.height, preset.width, name)
    return schedules, profiles


def comparisons(run: BenchRun, engine, dit, prompt, schedules) -> dict:
    """The precision errors, the peer comparison and the Wan2.1 baseline the flags ask for; speedups written in."""
    args, preset, frames = run.args, run.preset, run.frames
    errors = None
    if args.precision_errors:
        from .fp8_error import precision_errors

        print("precision errors against fp32 (one video per variant):", flush=True)
        fp8_core = "torch_fp8" if args.attention == "torch" else "triton_fp8"
        errors = precision_errors(lambda dt: initialized_dit(run.cfg, dt, run.device), prompt.float(), frames, preset.height,
                                  preset.width, args.schedules, fp8_attention=fp8_core)
    peer = None
    if args.peer_self_forcing is not None:
        peer = compare(args.peer_self_forcing, engine, prompt, frames, preset.height, preset.width, args.schedules, run.repeats)
    if args.no_baseline or preset.baseline_steps == 0 or run.par:
        why = "--no-baseline" if args.no_baseline else "--parallel (the baseline runs one process)" if run.par \
            else f"preset {preset.name} runs no baseline"
        baseline = {"skipped": why}
    else:
        latent = ((frames - 1) // VAE_TIME_STRIDE + 1, preset.height // VAE_SPACE_STRIDE, preset.width // VAE_SPACE_STRIDE)
        baseline = wan_baseline(dit, prompt, latent, frames, preset.baseline_steps)
    sf = schedules.get("self_forcing")
    for r in schedules.values():
        r["speedup_vs_self_forcing"] = sf["seconds_per_frame"] / r["seconds_per_frame"] if sf else None
        r["predicted_speedup_vs_self_forcing"] = sf["flops_per_frame"] / r["flops_per_frame"] if sf else None
        base = baseline.get("seconds_per_frame")
        r["speedup_vs_wan_baseline"] = base / r["seconds_per_frame"] if base else None
    return {"precision_errors": errors, "peer_self_forcing": peer, "wan_baseline": baseline}


def make_record(run: BenchRun, argv, env, engine, decoders, schedules, profiles, compared: dict) -> dict:
    args, preset = run.args, run.preset
    vae = {"dim": preset.vae_dim, "flops_per_frame": flops.vae_flops_per_frame(preset.height, preset.width, VAEConfig(dim=preset.vae_dim)),
           "taehv_flops_per_frame": flops.taehv_flops_per_frame(preset.height, preset.width), "decoders": list(decoders),
           "tae_weights": (str(args.tae) if args.tae else RANDOM_TAE) if "tae" in decoders else None}
    return {
        "preset": preset.name,
        "command": command_line("histream bench", argv),
        "date": time.strftime("%Y-%m-%d"),
        "environment": env,
        "model": preset.model,
        "video": {"frames": run.frames, "height": preset.height, "width": preset.width},
        "dtype": run.dtype_name,
        "attention": engine.config.attention,
        "precision": args.precision,
        "kv_dtype": engine.config.kv_dtype,
        "linear_dtype": engine.config.linear_dtype,
        "precision_errors": compared["precision_errors"],
        "dit": args.dit,
        "engine_dir": str(args.engine_dir) if args.engine_dir else None,
        "repeats": run.repeats,
        "prompt_tokens": args.prompt_tokens,
        "cuda_graphs": args.cuda_graphs,
        "torch_compile": args.compile,
        "parallel": {"mode": args.parallel, "world_size": run.par.world_size} if run.par else None,
        "vae": vae if decoders else None,
        "wan_baseline": compared["wan_baseline"],
        "schedules": schedules,
        "profiles": {name: {k: v for k, v in prof.items() if k != "table"} for name, prof in profiles.items()} or None,
        "attention_auto": auto_choices() if args.attention == "auto" else None,
        "peer_self_forcing": compared["peer_self_forcing"],
    }


def write_outputs(run: BenchRun, record: dict, profiles: dict) -> None:
    """The record (JSON), its table, the profiles' tables and the plot; rank 0 only."""
    args, env = run.args, record["environment"]
    slug = "cpu" if run.device.type == "cpu" else env["device"].replace(" ", "-")
    if run.par:
        slug += f"-x{run.par.world_size}"
    out = args.out or default_out(record["date"], slug, run.preset.name)
    write_json(record, out)
    print("\n" + markdown_table(record))
    print(f"\nwrote {out}")
    if profiles:
        tables = out.with_suffix(".profile.txt")
        tables.write_text("".join(f"== {name}: chunk {p['chunk']} ({p['run_mode']}), {p['clock']} ==\n{p['table']}\n" for name, p in profiles.items()))
        for name, prof in profiles.items():
            top = ", ".join(f"{op['name']} {100 * op['share']:.0f}%" for op in prof["ops"][:4])
            print(f"profile {name} (chunk {prof['chunk']}, {prof['total_seconds']:.3f} s of {prof['clock']} self time): {top}")
        print(f"wrote {tables}")
    if not args.no_plot:
        why = plot_chunks(record, out.with_suffix(".png"))
        print(f"plot: {why}" if why else f"wrote {out.with_suffix('.png')}")


def main(argv=None) -> int:
    if "--live" in (sys.argv[1:] if argv is None else argv):  # the soak of one unbounded stream (bench/live.py)
        from .live import main as live_main

        return live_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    run = resolve_run(parser, args)
    decoders = build_decoders(parser, run)
    dit = initialized_dit(run.cfg, getattr(torch, run.dtype_name), run.device)
    engine = Engine(dit, engine_config(args), vae=next(iter(decoders.values()), None))
    prompt = torch.randn(1, run.cfg.text_len, run.cfg.text_dim, device=run.device).to(dit.dtype)  # [1, 512, text_dim]
    prompt[:, args.prompt_tokens :] = 0  # UMT5 output: the prompt's tokens, then zero rows up to 512
    env = environment(run.device)
    preset, par = run.preset, run.par
    print(f"histream bench {preset.name}: {preset.description}\n{env['device']}, {run.dtype_name}, attention {args.attention}, "
          f"dit {args.dit}, {run.frames} frames at {preset.width}x{preset.height}, {run.repeats} repeats, cuda graphs "
          f"{'on' if args.cuda_graphs else 'off'}, torch.compile {'on' if args.compile else 'off'}"
          + (f", {par.world_size} ranks ({args.parallel})" if par else ""), flush=True)
    schedules, profiles = run_all(run, engine, prompt, env, decoders)
    compared = comparisons(run, engine, dit, prompt, schedules)
    record = make_record(run, argv, env, engine, decoders, schedules, profiles, compared)
    if par is None or par.is_first:
        write_outputs(run, record, profiles)
    return 0