"""The ``histream`` command line: ``demo``, ``generate``, ``bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .config import PRESETS
from .demo import tiny_demo_engine
from .model.dit import initialized_dit
from .output_paths import check_output_file, check_output_folder
from .runtime import SCHEDULES, Engine, EngineConfig
from .runtime.results import ChunkResult
from .runtime.video_request import check_video_request
from .runtime.parallel.group import arguments_fingerprint, init_parallel
from .runtime.request_checks import check_prompt_embeds
from .runtime.denoise.schedules import resolve_schedule
from .text_encoder import load_prompt_embeds
from .video import Mp4Writer

TABLE = (
    ("chunk", 5), ("low", 3), ("high", 4), ("recache", 7), ("frames", 6),
    ("keys", 8), ("cache MiB", 9), ("seconds", 8), ("ms/frame", 9), ("vae s", 6),
)


def table_header() -> str:
    return "  ".join(name.rjust(w) for name, w in TABLE)


def table_row(c: ChunkResult) -> str:
    cells = (
        c.index, c.forwards["low"], c.forwards["high"], sum(c.recache.values()), c.video_frames,
        c.tokens_attended, f"{c.cache_bytes / 2**20:.2f}", f"{c.seconds:.3f}", f"{1e3 * c.seconds / c.video_frames:.1f}",
        f"{c.vae_seconds:.3f}",
    )
    return "  ".join(str(v).rjust(w) for v, (_, w) in zip(cells, TABLE))


def summary(chunks: list[ChunkResult]) -> str:
    frames = sum(c.video_frames for c in chunks)
    denoise = sum(c.seconds for c in chunks)
    vae = sum(c.vae_seconds for c in chunks)
    return (f"{frames} frames: denoise {denoise:.3f} s ({denoise / frames:.4f} s/frame), "
            f"VAE {vae:.3f} s ({vae / frames:.4f} s/frame), total {denoise + vae:.3f} s")


def stream_to_mp4(stream, out: Path, width: int, height: int, num_chunks: int, table: bool) -> list[ChunkResult]:
    """Write each chunk's frames as it arrives; on any failure the partial file is removed."""
    done: list[ChunkResult] = []
    with Mp4Writer(out, width, height) as writer:
        if table:
            print(table_header())
        for chunk in stream:
            writer.write(chunk.frames[0])
            done.append(chunk)
            if table:
                print(table_row(chunk), flush=True)
            else:
                bar = "#" * len(done) + "-" * (num_chunks - len(done))
                print(f"[{bar}] chunk {len(done)}/{num_chunks}: {chunk.video_frames} frames, "
                      f"denoise {chunk.seconds:.2f} s, VAE {chunk.vae_seconds:.2f} s", flush=True)
    return done


def run_demo(args) -> int:
    """End to end on the embedded tiny models with random weights: no downloads, seconds on a CPU."""
    sched = resolve_schedule(args.schedule)
    num_chunks = check_video_request(args.frames, args.height, args.width, EngineConfig().chunk_size, sched) // EngineConfig().chunk_size
    check_output_file(args.out, (".mp4",), "--out")
    engine, prompt = tiny_demo_engine(EngineConfig(attention=args.attention), seed=args.seed, decoder="tae" if args.tae else "wan")
    dit = engine.dit
    decoder = "tiny TAEHV" if args.tae else "tiny Wan VAE"
    print(
        f"histream demo: tiny Wan DiT ({sum(p.numel() for p in dit.parameters()) / 1e6:.2f}M params) and {decoder}, random weights "
        f"(the picture is noise; the path is the real one), {args.frames} frames at {args.width}x{args.height}, "
        f"schedule {args.schedule}, attention {args.attention}"
    )
    stream = engine.stream(prompt, args.frames, args.height, args.width, schedule=sched, seed=args.seed)
    chunks = stream_to_mp4(stream, args.out, args.width, args.height, num_chunks, table=True)
    print(summary(chunks) + f" (CPU, tiny models, decoder {engine.vae.name})")
    print(f"wrote {args.out.resolve()}")
    return 0


def run_generate(args) -> int:
    par = joined_group(args)
    first = par is None or par.is_first  # with --parallel, rank 0 alone writes the mp4 and prints

    def checks():
        sched = resolve_schedule(args.schedule)
        config = EngineConfig(attention=args.attention, parallel=args.parallel)
        num_chunks = check_video_request(args.frames, args.height, args.width, config.chunk_size, sched) // config.chunk_size  # before loading gigabytes
        if first:
            check_output_file(args.out, (".mp4",), "--out")
        return sched, config, num_chunks

    sched, config, num_chunks = checks() if par is None else par.agreed("generate commands", arguments_fingerprint(args), checks)
    dtype = getattr(torch, args.dtype)
    engine = Engine.from_pretrained(
        args.model_dir, checkpoint=args.checkpoint, dtype=dtype, device=args.device if par is None else par.device,
        config=config, text_encoder=args.prompt is not None, vae="tae" if args.tae else "wan", tae_path=args.tae,
    )

    def prompt():
        if args.prompt is not None:
            embeds = engine.text_encoder.encode(args.prompt)
            engine.text_encoder.free()
        else:
            embeds = load_prompt_embeds(args.prompt_embeds, engine.dit.config.text_dim)
        return check_prompt_embeds(embeds, engine.dit.config.text_dim, max_batch=1)

    embeds = prompt() if par is None else par.agreed("prompts", {}, prompt)  # every rank encodes; one failing fails all
    stream = engine.stream(embeds, args.frames, args.height, args.width, schedule=sched, seed=args.seed)
    if not first:
        for _ in stream:
            pass
        return 0
    chunks = stream_to_mp4(stream, args.out, args.width, args.height, num_chunks, table=False)
    ranks = "" if par is None else f", {par.world_size} ranks (ulysses)"
    print(summary(chunks) + f" (decoder {engine.vae.name}{ranks})")
    print(f"wrote {args.out.resolve()}")
    return 0


def joined_group(args):
    """The process group of ``--parallel ulysses`` (torchrun's), or None without it; ``--device`` must agree with it."""
    if args.parallel is None:
        return None
    par = init_parallel()
    if args.device is not None and torch.device(args.device).type != par.device.type:
        raise ValueError(f"--device {args.device}: with --parallel each rank runs on its process group's device ({par.device} "
                         "here: NCCL ranks on cuda:LOCAL_RANK, gloo ranks on the CPU); drop --device")
    return par


def run_export(args) -> int:
    from .graphs.onnx_export import export_graphs
    from .model_dir import load_folder_dit

    check_output_folder(args.out, "--out")  # before a model is built: minutes and gigabytes at 1.3B
    dtype = getattr(torch, args.dtype)
    if args.preset is not None:
        dit = initialized_dit(args.preset, dtype, args.device, args.seed)  # the bench presets' very weights (seed 0)
        source = f"preset {args.preset} with random weights (seed {args.seed})"
    else:
        dit, _ = load_folder_dit(args.model_dir, args.checkpoint, dtype, args.device)
        source = str(args.checkpoint or args.model_dir)
    print(f"histream export: {source}, schedule {args.schedule}, {args.width}x{args.height}, {args.frames} frames, "
          f"batch {args.batch}, {args.dtype} -> {args.out}")
    manifest = export_graphs(dit, args.schedule, args.height, args.width, args.frames, args.out, batch=args.batch, only=args.only,
                             fp8=args.fp8)
    print(f"wrote {manifest}")
    return 0


def run_build_trt(args) -> int:
    from .graphs.tensorrt_build import build_trt
    from .runtime.runners.registry import RUNNERS

    if (why := RUNNERS.entry("tensorrt").unavailable_reason()) is not None:
        raise RuntimeError(f"histream build-trt needs TensorRT: {why}")
    out = build_trt(args.onnx, args.precision, args.out, args.workspace_gib)
    print(f"wrote {out}: EngineConfig(dit='tensorrt', engine_dir='{out}')")
    return 0


def run_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import PIL  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"histream serve needs the serve extra ({exc.name} is missing): pip install -e '.[serve]'") from exc
    from . import host as hosting
    from .serve.embeddings import EmbeddingsDir
    from .serve.local.server import serve_forever
    from .serve.local.transport import local_app
    from .serve.protocol import Limits, check_port

    # a mistyped folder, a limit that would refuse every request (or none) or a port that cannot be stop the server
    # here, with one line, before a model loads or a port opens
    EmbeddingsDir(args.embeds_dir)
    limits = Limits(args.max_frames, args.max_side, args.max_queue, args.max_live_seconds, args.max_record_seconds,
                    args.max_replay_seconds)
    check_port(args.port)
    if args.ray:
        engine = None  # each replica opens its own
        description = f"{args.checkpoint or args.model_dir or 'the embedded tiny demo model'} on Ray Serve"
    elif args.model_dir is not None:
        engine = hosting.open_engine(hosting.EngineOptions(str(args.model_dir), str(args.checkpoint or ""), args.dtype,
                                                           args.device or "", args.attention, text_encoder=args.text_encoder,
                                                           tae_path=str(args.tae or "")))
        description = f"{args.checkpoint or args.model_dir}"
    else:
        if args.tae is not None:
            raise ValueError("--tae needs --model-dir (the tiny demo model has its own decoder)")
        engine = hosting.tiny_demo(args.device or "cpu", args.attention, 0)
        description = "the embedded tiny demo model (random weights: the picture is noise, the path is the real one)"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"histream serve: WARNING: listening on {args.host}: anyone who can reach this machine can use its GPU and "
              "read the streams; there is no authentication", file=sys.stderr)
    if args.ray:
        try:
            from .serve.ray.deploy import serve_forever as serve_on_ray
        except ImportError as exc:
            raise RuntimeError(f"histream serve --ray needs the ray extra ({exc.name} is missing): pip install -e '.[ray]'") from exc
        return serve_on_ray(args, ray_spec(args), description, limits)
    return serve_forever(local_app(engine, description, limits, args.embeds_dir), args.host, args.port, description)


PARALLEL_HELP = ("one stream over torchrun's processes, sequence-parallel: torchrun --nproc-per-node N -m histream_engine "
                 "... --parallel ulysses (rank 0 writes and prints; docs/parallel.md)")
TAE_HELP = "decode with TAEHV (taew2_1.pth or taew2_1.safetensors from madebyollin/taehv) instead of the Wan VAE"


def ray_spec(args) -> dict:
    """What each Ray replica needs to open its own engine."""
    return {"model_dir": str(args.model_dir) if args.model_dir else None, "checkpoint": str(args.checkpoint or ""),
            "dtype": args.dtype, "device": args.device, "attention": args.attention, "text_encoder": args.text_encoder,
            "tae_path": str(args.tae or "")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="histream", description="HiStream inference engine")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the embedded tiny model end to end and write an mp4 (CPU, seconds)")
    demo.add_argument("--frames", type=int, default=45, help="video frames, 4k+1 with (frames-1)/4+1 divisible by 3")
    demo.add_argument("--height", type=int, default=256)
    demo.add_argument("--width", type=int, default=256)
    demo.add_argument("--schedule", default="histream", choices=sorted(SCHEDULES))
    demo.add_argument("--attention", default="torch")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", type=Path, default=Path("histream_demo.mp4"))
    demo.add_argument("--tae", action="store_true", help="decode with an embedded tiny TAEHV (random weights) instead of the tiny Wan VAE")
    demo.set_defaults(func=run_demo)

    gen = sub.add_parser("generate", help="prompt to mp4 with a Wan2.1 model folder")
    gen.add_argument("--model-dir", required=True, type=Path, help="Wan2.1 folder (DiT, Wan2.1_VAE.pth, T5, google/umt5-xxl) or diffusers layout")
    gen.add_argument("--checkpoint", type=Path, help="causal DiT weights replacing the folder's (Self-Forcing / HiStream .pt)")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text prompt (needs the T5 encoder and tokenizer in --model-dir)")
    prompt.add_argument("--prompt-embeds", type=Path, help="precomputed UMT5 embeddings (.safetensors or .pt, [512, 4096])")
    gen.add_argument("--schedule", default="histream", help=f"one of {sorted(SCHEDULES)} or a schedule .json")
    gen.add_argument("--height", type=int, default=1088)
    gen.add_argument("--width", type=int, default=1920)
    gen.add_argument("--frames", type=int, default=81)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--attention", default="torch")
    gen.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    gen.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    gen.add_argument("--out", type=Path, default=Path("out.mp4"))
    gen.add_argument("--tae", type=Path, metavar="PATH", help=TAE_HELP)
    gen.add_argument("--parallel", choices=["ulysses"], help=PARALLEL_HELP)
    gen.set_defaults(func=run_generate)

    exp = sub.add_parser("export", help="ONNX graphs of the DiT forwards a schedule needs, with a manifest")
    source = exp.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="Wan2.1 folder whose DiT to export (or the config for --checkpoint)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a model config with random weights (for checks)")
    exp.add_argument("--checkpoint", type=Path, help="causal DiT weights replacing the folder's")
    exp.add_argument("--seed", type=int, default=0, help="seed of --preset's random weights")
    exp.add_argument("--schedule", default="histream", choices=sorted(SCHEDULES))
    exp.add_argument("--height", type=int, required=True)
    exp.add_argument("--width", type=int, required=True)
    exp.add_argument("--frames", type=int, default=81, help="video frames (full-cache schedules need one graph more per chunk)")
    exp.add_argument("--batch", type=int, default=1)
    exp.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    exp.add_argument("--device", default="cpu", help="where to trace (cuda is faster for big models)")
    exp.add_argument("--only", action="append", metavar="SIGNATURE", help="export only these signatures (names as listed)")
    exp.add_argument("--fp8", action="store_true", help="FP8 Q/DQ around the blocks' linear layers (bfloat16 only; for build-trt --precision fp8)")
    exp.add_argument("--out", type=Path, required=True)
    exp.set_defaults(func=run_export)

    trt = sub.add_parser("build-trt", help="TensorRT engines from a histream export folder (needs TensorRT and a GPU)")
    trt.add_argument("--onnx", type=Path, required=True, help="the folder histream export wrote")
    trt.add_argument("--precision", required=True, choices=["bf16", "fp16", "fp8"])
    trt.add_argument("--out", type=Path, help="default: ONNX_DIR/tensorrt-PRECISION")
    trt.add_argument("--workspace-gib", type=float, default=8.0)
    trt.set_defaults(func=run_build_trt)

    srv = sub.add_parser("serve", help="live streaming to a browser page (needs the serve extra)")
    srv.add_argument("--model-dir", type=Path, help="a Wan2.1 folder; default: the embedded tiny demo model")
    srv.add_argument("--checkpoint", type=Path, help="causal DiT weights replacing the folder's")
    srv.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    srv.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    srv.add_argument("--attention", default="torch")
    srv.add_argument("--no-text-encoder", dest="text_encoder", action="store_false",
                     help="do not load UMT5 (11 GB): requests then use --embeds-dir files")
    srv.add_argument("--embeds-dir", type=Path, help="a folder of prompt embeddings (.safetensors / .pt) that requests may name")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback prints a warning)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-frames", type=int, default=161)
    srv.add_argument("--max-side", type=int, default=1920, help="largest height or width a request may ask for")
    srv.add_argument("--max-queue", type=int, default=8, help="streams that may wait for the engine")
    srv.add_argument("--max-live-seconds", type=float, default=300.0, help="the longest a live stream (no frame count) may run")
    srv.add_argument("--max-record-seconds", type=float, default=60.0, help="a live stream's mp4 keeps at most its last this many seconds")
    srv.add_argument("--max-replay-seconds", type=float, help="the frames a stream holds for watchers who join late (default: "
                     "--max-record-seconds)")
    srv.add_argument("--tae", type=Path, metavar="PATH", help=TAE_HELP + " (with --model-dir)")
    srv.add_argument("--ray", action="store_true", help="serve over Ray Serve replicas (needs the ray extra; docs/ray-serve.md)")
    srv.add_argument("--replicas", default="1", help="--ray: engine replicas, a count or 'auto' (autoscaling on ongoing streams)")
    srv.add_argument("--min-replicas", type=int, default=1, help="--ray --replicas auto: fewest replicas")
    srv.add_argument("--max-replicas", type=int, default=4, help="--ray --replicas auto: most replicas")
    srv.add_argument("--gpus-per-replica", type=int, default=1, help="--ray: N > 1 makes each replica one N-rank sequence-parallel group, "
                     "a GPU a rank, packed on one node (on CPUs: N processes); the model's heads must divide by N")
    srv.add_argument("--cpus-per-replica", type=float, default=1.0, help="--ray: CPUs Ray reserves for each replica (for each of its ranks with --gpus-per-replica N)")
    srv.add_argument("--ray-address", help="--ray: join this Ray cluster (e.g. auto, ray://head:10001); default: start a local one")
    srv.add_argument("--reconnect-grace-seconds", type=float, default=10.0,
                     help="--ray: a stream whose watchers all left is cancelled if none reconnects within this")
    srv.set_defaults(func=run_serve)

    # Listed for --help; its arguments belong to the suite's own parser (see main).
    sub.add_parser("bench", help="latency-per-frame benchmark suite (histream bench --help)", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench.suite import main as bench_main

        func, args = bench_main, argv[1:]
    else:
        args = build_parser().parse_args(argv)
        func = args.func
    try:
        return func(args)
    except (CheckpointError, ValueError, RuntimeError, OSError) as exc:
        print(f"histream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
