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
from .cli_parser import attention_name, in_flags, make_parser
from .optional import require
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


def engine_config(args, **settings) -> EngineConfig:
    """``--attention`` and ``--precision`` as an engine config; ``--precision fp8`` spelled out by
    ``EngineConfig.with_precision`` (the FP8 core of ``--attention``, e4m3 caches and linears)."""
    if args.precision:
        return EngineConfig.with_precision(args.precision, attention=args.attention, **settings)
    return EngineConfig(attention=args.attention, **settings)


def run_demo(args) -> int:
    """End to end on the embedded tiny models with random weights: no downloads, seconds on a CPU."""
    sched = resolve_schedule(args.schedule)
    config = engine_config(args)
    num_chunks = check_video_request(args.frames, args.height, args.width, config.chunk_size, sched) // config.chunk_size
    check_output_file(args.out, (".mp4",), "--out")
    engine, prompt = tiny_demo_engine(config, seed=args.seed, decoder="tae" if args.tae else "wan")
    dit = engine.dit
    decoder = "tiny TAEHV" if args.tae else "tiny Wan VAE"
    print(
        f"histream demo: tiny Wan DiT ({sum(p.numel() for p in dit.parameters()) / 1e6:.2f}M params) and {decoder}, random weights "
        f"(the picture is noise; the path is the real one), {args.frames} frames at {args.width}x{args.height}, "
        f"schedule {args.schedule}, attention {engine.config.attention}" + (f", precision {args.precision}" if args.precision else "")
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
        config = engine_config(args, parallel=args.parallel)
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
    for module in ("onnx", "onnxscript"):  # torch.onnx's exporter needs onnxscript
        require(module, "onnx", "histream export")
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
    for module in ("fastapi", "PIL", "uvicorn", "multipart"):  # multipart: /v1 takes forms
        require(module, "serve", "histream serve")
    from . import host as hosting
    from .serve.embeddings import EmbeddingsDir
    from .serve.local.server import serve_forever
    from .serve.local.transport import local_app
    from .serve import auth
    from .serve.openai.options import VideoOptions
    from .serve.protocol import Limits, check_port
    from .serve.resilience import Resilience

    # a mistyped folder, a limit that would refuse every request (or none) or a port that cannot be stop the server
    # here, with one line, before a model loads or a port opens
    EmbeddingsDir(args.embeds_dir)
    limits = Limits(args.max_frames, args.max_side, args.max_queue, args.max_live_seconds, args.max_record_seconds,
                    args.max_replay_seconds)
    resilience = Resilience(args.max_resumes, args.resume_within)
    check_port(args.port)
    key = auth.resolve_key(args.api_key, args.no_auth)
    auth.check_exposure(args.host, key, args.no_auth)
    videos = VideoOptions(args.data_dir, args.retention_seconds, args.max_stored_bytes, args.max_upload_bytes,
                          stand_in_text=args.model_dir is None)  # checks --data-dir (made when missing)
    digest = None if key is None else auth.key_digest(key)
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
        engine = hosting.tiny_demo(args.device or "cpu", args.attention, 0, encoder=True)  # encoder: /v1's given frames
        description = "the embedded tiny demo model (random weights: the picture is noise, the path is the real one)"
    if key is None and not auth.is_loopback(args.host):
        print(f"histream serve: WARNING: listening on {args.host} with --no-auth: anyone who can reach this machine can use "
              "its GPU and read the streams", file=sys.stderr)
    if args.ray:
        require("ray", "ray", "histream serve --ray")
        from .serve.ray.deploy import serve_forever as serve_on_ray

        return serve_on_ray(args, ray_spec(args), description, limits, videos, digest, resilience)
    app = local_app(engine, description, limits, args.embeds_dir, videos=videos, key_digest=digest, resilience=resilience)
    return serve_forever(app, args.host, args.port, description)


PARALLEL_HELP = ("one stream over torchrun's processes, sequence-parallel: torchrun --nproc-per-node N -m histream_engine "
                 "... --parallel ulysses (rank 0 writes and prints; docs/parallel.md)")
TAE_HELP = "decode with TAEHV (taew2_1.pth or taew2_1.safetensors from madebyollin/taehv) instead of the Wan VAE"


def ray_spec(args) -> dict:
    """What each Ray replica needs to open its own engine."""
    return {"model_dir": str(args.model_dir) if args.model_dir else None, "checkpoint": str(args.checkpoint or ""),
            "dtype": args.dtype, "device": args.device, "attention": args.attention, "text_encoder": args.text_encoder,
            "tae_path": str(args.tae or "")}


DTYPES = ["bfloat16", "float16", "float32"]
AUTH_ENV = "HISTREAM_API_KEY"  # serve.auth.ENV (serve is imported only when it runs: it needs the serve extra)
FRAMES_HELP = "video frames: 4k+1, with (frames - 1) / 4 + 1 divisible by 3 (the chunk size), e.g. 9, 21, 33, 45, 81"
SIZE_HELP = ("video {}: a multiple of 16, of 32 for the schedules with a half-resolution pass ("
             + ", ".join(sorted(name for name, s in SCHEDULES.items() if s.uses_low)) + ")")
SCHEDULE_HELP = "the denoising schedule (docs/schedules.md)"
ATTENTION_HELP = "attention backend (histream_engine.attention_backends() lists them and why any is unavailable here)"
PRECISION_HELP = ("fp8: e4m3 ring caches, the FP8 attention core of --attention (torch -> torch_fp8, triton/auto -> "
                  "triton_fp8) and FP8 block linears (docs/fp8.md); default: the model's dtype throughout")
DEVICE_HELP = "cpu, cuda or cuda:N; default: cuda if available, else cpu"


def add_video_options(p: argparse.ArgumentParser, frames: int, height: int, width: int, seed_help: str) -> None:
    p.add_argument("--frames", type=int, default=frames, help=FRAMES_HELP)
    p.add_argument("--height", type=int, default=height, help=SIZE_HELP.format("height"))
    p.add_argument("--width", type=int, default=width, help=SIZE_HELP.format("width"))
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="run the embedded tiny model end to end and write an mp4 (CPU, seconds)",
                          description="The embedded tiny DiT and decoder with random weights, end to end: no downloads, "
                                      "seconds on a CPU. The picture is noise; the path is the real one.")
    add_video_options(demo, 45, 256, 256, "seed of the initial noise (the weights are always the demo's)")
    demo.add_argument("--schedule", default="histream", choices=sorted(SCHEDULES), help=SCHEDULE_HELP)
    demo.add_argument("--attention", default="torch", type=attention_name("demo", True), help=ATTENTION_HELP)
    demo.add_argument("--precision", choices=["fp8"], help=PRECISION_HELP)
    demo.add_argument("--out", type=Path, default=Path("histream_demo.mp4"), help="the mp4 to write")
    demo.add_argument("--tae", action="store_true", help="decode with an embedded tiny TAEHV (random weights) instead of the tiny Wan VAE")
    demo.set_defaults(func=run_demo)


def add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="prompt to mp4 with a Wan2.1 model folder", description="A prompt to an mp4 with a Wan2.1 model folder.")
    gen.add_argument("--model-dir", required=True, type=Path, help="Wan2.1 folder (DiT, Wan2.1_VAE.pth, T5, google/umt5-xxl) or diffusers layout")
    gen.add_argument("--checkpoint", type=Path, help="causal DiT weights replacing the folder's (Self-Forcing / HiStream .pt)")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text prompt (needs the T5 encoder and tokenizer in --model-dir)")
    prompt.add_argument("--prompt-embeds", type=Path, help="precomputed UMT5 embeddings (.safetensors or .pt, [512, 4096])")
    gen.add_argument("--schedule", default="histream", help=f"one of {', '.join(sorted(SCHEDULES))}, or a schedule .json file (docs/schedules.md)")
    add_video_options(gen, 81, 1088, 1920, "seed of the initial noise")
    gen.add_argument("--attention", default="torch", type=attention_name("generate", True), help=ATTENTION_HELP)
    gen.add_argument("--precision", choices=["fp8"], help=PRECISION_HELP)
    gen.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="the model's dtype")
    gen.add_argument("--device", default=None, help=DEVICE_HELP)
    gen.add_argument("--out", type=Path, default=Path("out.mp4"), help="the mp4 to write (its folder is made)")
    gen.add_argument("--tae", type=Path, metavar="PATH", help=TAE_HELP)
    gen.add_argument("--parallel", choices=["ulysses"], help=PARALLEL_HELP)
    gen.set_defaults(func=run_generate)


def add_export(sub) -> None:
    exp = sub.add_parser("export", help="ONNX graphs of the DiT forwards a schedule needs, with a manifest",
                         description="ONNX graphs of the DiT forwards a schedule needs at one size, with a manifest (docs/graphs.md).")
    source = exp.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="Wan2.1 folder whose DiT to export (or the config for --checkpoint)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a model config with random weights (for checks)")
    exp.add_argument("--checkpoint", type=Path, help="causal DiT weights replacing the folder's")
    exp.add_argument("--seed", type=int, default=0, help="seed of --preset's random weights")
    exp.add_argument("--schedule", default="histream", choices=sorted(SCHEDULES), help=SCHEDULE_HELP)
    exp.add_argument("--height", type=int, required=True, help=SIZE_HELP.format("height"))
    exp.add_argument("--width", type=int, required=True, help=SIZE_HELP.format("width"))
    exp.add_argument("--frames", type=int, default=81, help="video frames (full-cache schedules need one graph more per chunk)")
    exp.add_argument("--batch", type=int, default=1, help="prompts per forward the graphs take")
    exp.add_argument("--dtype", default="float32", choices=DTYPES, help="the graphs' dtype")
    exp.add_argument("--device", default="cpu", help="where to trace (cuda is faster for big models)")
    exp.add_argument("--only", action="append", metavar="SIGNATURE", help="export only these signatures (names as listed); default: all")
    exp.add_argument("--fp8", action="store_true", help="FP8 Q/DQ around the blocks' linear layers (bfloat16 only; for build-trt --precision fp8)")
    exp.add_argument("--out", type=Path, required=True, help="the folder to write the graphs and their manifest into")
    exp.set_defaults(func=run_export)


def add_build_trt(sub) -> None:
    trt = sub.add_parser("build-trt", help="TensorRT engines from a histream export folder (needs TensorRT and a GPU)",
                         description="TensorRT engines from a histream export folder (needs TensorRT and a GPU; docs/graphs.md).")
    trt.add_argument("--onnx", type=Path, required=True, help="the folder histream export wrote")
    trt.add_argument("--precision", required=True, choices=["bf16", "fp16", "fp8"], help="the engines' precision (fp8 needs export --fp8)")
    trt.add_argument("--out", type=Path, help="default: ONNX_DIR/tensorrt-PRECISION")
    trt.add_argument("--workspace-gib", type=float, default=8.0, help="GPU memory TensorRT may use while it builds, in GiB")
    trt.set_defaults(func=run_build_trt)


def add_serve(sub) -> None:
    srv = sub.add_parser("serve", help="live streaming to a browser page (needs the serve extra)",
                         description="Live streaming to a browser page and an HTTP API (needs the serve extra; docs/serve.md).")
    srv.add_argument("--model-dir", type=Path, help="a Wan2.1 folder; default: the embedded tiny demo model")
    srv.add_argument("--checkpoint", type=Path, help="causal DiT weights replacing the folder's")
    srv.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="the model's dtype (with --model-dir)")
    srv.add_argument("--device", default=None, help=DEVICE_HELP)
    srv.add_argument("--attention", default="torch", type=attention_name("serve", False), help=ATTENTION_HELP)
    srv.add_argument("--no-text-encoder", dest="text_encoder", action="store_false",
                     help="do not load UMT5 (11 GB): requests then use --embeds-dir files")
    srv.add_argument("--embeds-dir", type=Path, help="a folder of prompt embeddings (.safetensors / .pt) that requests may name")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback needs --api-key or --no-auth)")
    srv.add_argument("--api-key", help=f"every route then needs Authorization: Bearer KEY (default: ${{{AUTH_ENV}}})")
    srv.add_argument("--no-auth", action="store_true", help="serve a non-loopback --host without an API key, on purpose")
    srv.add_argument("--data-dir", type=Path, metavar="DIR", help="keep /v1 videos (videos/<id>/) and, on plain serve, jobs "
                     "(jobs/<id>/: request, checkpoint, segments, video) here: a restarted server lists the videos, resumes "
                     "what was running and runs what was queued (created if missing; default: a temporary folder)")
    srv.add_argument("--retention-seconds", type=float, default=86400.0, help="a finished /v1 video is kept this long")
    srv.add_argument("--max-stored-bytes", type=int, default=10 << 30, help="all /v1 videos' files together; the oldest go first")
    srv.add_argument("--max-upload-bytes", type=int, default=64 << 20, help="the largest /v1 upload (an image or mp4) request")
    srv.add_argument("--port", type=int, default=8000, help="port to listen on")
    srv.add_argument("--max-frames", type=int, default=161, help="the most frames a request may ask for")
    srv.add_argument("--max-side", type=int, default=1920, help="largest height or width a request may ask for")
    srv.add_argument("--max-queue", type=int, default=8, help="streams that may wait for the engine")
    srv.add_argument("--max-live-seconds", type=float, default=300.0, help="the longest a live stream (no frame count) may run")
    srv.add_argument("--max-record-seconds", type=float, default=60.0, help="a live stream's mp4 keeps at most its last this many seconds")
    srv.add_argument("--max-replay-seconds", type=float, help="the frames a stream holds for watchers who join late (default: "
                     "--max-record-seconds)")
    srv.add_argument("--tae", type=Path, metavar="PATH", help=TAE_HELP + " (with --model-dir)")
    srv.add_argument("--max-resumes", type=int, default=3, help="resume a stream whose worker was lost (a replica, a rank, "
                         "the server's process) at most this many times, then fail it with that reason")
    srv.add_argument("--resume-within", type=float, default=600.0, metavar="SECONDS",
                     help="a stream's checkpoint older than this has expired: the stream fails instead of resuming")
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


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("histream", "HiStream inference engine")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,generate,export,build-trt,serve,bench}")
    for add in (add_demo, add_generate, add_export, add_build_trt, add_serve):
        add(sub)
    # Listed for --help; its arguments belong to the suite's own parser (see main).
    sub.add_parser("bench", help="latency-per-frame benchmark suite (histream bench --help)", add_help=False)
    return parser


def verb_parser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench.suite import build_parser as bench_parser, main as bench_main

        func, args, parser = bench_main, argv[1:], bench_parser()
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        func, parser = args.func, verb_parser(parser, args.command)
    try:
        return func(args)
    except (CheckpointError, ValueError, RuntimeError, OSError) as exc:
        # one line, in the verb's words: its flags for the engine's Python names
        print(f"histream: error: {' '.join(in_flags(exc, parser).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
