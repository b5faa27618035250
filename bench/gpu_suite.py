"""Every GPU check in one command, for a lent H100/H200: ``bench/gpu_suite.sh`` (which installs the package first).

    bench/gpu_suite.sh [--dry-run] [--steps env,tests,aot,attention,vae,bench,graphs,bench_full,fp8] [--frames 57] [--out DIR]

Steps (each a subprocess with its own time limit, its output in its own log; a step that cannot run here
is skipped with the reason printed):

- ``env``: GPU, driver, versions, the attention backends and why any is unavailable;
- ``tests``: the test suite's kernel, attention, runtime and native (CUDA extension, compute-sanitizer) tests,
  compiled on the GPU;
- ``aot``: the sm_90a static report (``kernels.aot``) with the Triton installed there, and the compiled CUDA
  kernels' resources (``histream_engine.native.resources``);
- ``attention``: the attention microbenchmark (``bench/attention.py``) at 1088x1920 and 544x960, every backend;
- ``vae``: ``histream bench --preset 1080p-1.3b --vae`` on ``histream_plus`` (bf16: the Wan VAE, then TAEHV, each
  decoding every chunk), and both decoders alone at 1080p (``bench/vae.py``);
- ``bench``: ``histream bench --preset 1080p-1.3b --attention auto`` on the sliding-window schedules, eager;
- ``graphs``: the same with ``--cuda-graphs``;
- ``bench_full``: the full-cache schedules (``self_forcing``, ``no_agsw``) eager, with the Wan2.1 baseline
  where diffusers is installed. They never replay a graph (their cache grows every chunk), so they have no
  ``--cuda-graphs`` run.
- ``fp8`` (sm_89 or newer, with Triton): the FP8 numerics tests compiled on the GPU (the Triton FP8 core and recache
  write against their torch models, the engine's FP8 switches, ``triton_fp8`` through the engine), then
  ``histream bench --preset 1080p-1.3b`` on ``histream`` and ``histream_plus`` in bf16 and with ``--precision fp8``,
  side by side (``docs/fp8.md``);
- ``tensorrt`` (where TensorRT is installed): its GPU tests, then the bench's 1.3B model exported at 1080p, built
  into bf16 engines and benchmarked with ``--dit tensorrt``.

The device tool limits one command to 10 minutes, so docs/gpu-suite.md runs the steps in three calls, the most
telling first. Everything
goes to one folder (``$OUT/gpu_suite`` on the device machine): ``summary.md`` (printed last), ``summary.json``,
``suite.log`` and ``results.tar.gz`` (every step's JSON, logs and compiled kernels), few enough files for the
device tool to bring back. ``--dry-run`` prints the plan and every command without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from histream_engine.cli_parser import make_parser
from histream_engine.optional import is_installed
from histream_engine.provenance import git_commit

REPO = Path(__file__).resolve().parent.parent
STEP_NAMES = ("env", "tests", "aot", "attention", "vae", "bench", "graphs", "live", "bench_full", "fp8", "multi_gpu", "tensorrt")
FP8_SCHEDULES = ("histream", "histream_plus")
FP8_TESTS = ("tests/kernels/test_gpu_numerics.py::test_fp8_core_equals_its_torch_model_on_gpu",
             "tests/kernels/test_gpu_numerics.py::test_fp8_recache_write_equals_its_torch_reference_on_gpu",
             "tests/attention/test_fp8.py", "tests/runtime/test_fp8_engine.py")
SLIDING_WINDOW_SCHEDULES = ("histream", "histream_plus", "no_drc", "two_step")
FULL_CACHE_SCHEDULES = ("self_forcing", "no_agsw")
# 5 chunks: the first, then a steady chunk that runs eagerly, one that captures, two that replay.
DEFAULT_FRAMES = 57


@dataclass
class Step:
    name: str
    what: str
    commands: list[list[str]]
    timeout: int  # seconds for all of the step's commands
    skip: Callable[[], str | None] = lambda: None  # the reason it cannot run here, or None
    outputs: list[str] = field(default_factory=list)  # files (in the work folder) the summary reads


def _has(module: str) -> str | None:
    return None if is_installed(module) else f"{module} is not installed here"


def _multi_gpu_reason() -> str | None:
    """Why the ``multi_gpu`` step cannot run here: sequence parallelism needs two GPUs or more."""
    n = torch.cuda.device_count()
    return None if n >= 2 else f"sequence parallelism needs 2 or more GPUs, and {n} {'is' if n == 1 else 'are'} visible"


def _fp8_reason() -> str | None:
    """Why the ``fp8`` step cannot run here: e4m3 tensor cores start at sm_89, and the FP8 kernels are Triton's."""
    if reason := _has("triton"):
        return reason
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        major, minor = torch.cuda.get_device_capability()
        return f"FP8 needs e4m3 tensor cores (sm_89 or newer); {torch.cuda.get_device_name()} is sm_{major}{minor}"
    return None


LIVE_MINUTES = 5  # the live soak's length: long enough to show drift, short enough for one device call


def plan(frames: int, work: Path) -> list[Step]:
    py = sys.executable
    bench = [py, "-m", "bench", "--preset", "1080p-1.3b", "--frames", str(frames), "--repeats", "1", "--attention", "auto"]
    return [
        Step("env", "GPU, driver, versions, attention backends", [
            ["nvidia-smi"],
            [py, "-m", "bench.gpu_suite", "--write-env", str(work / "env.json")],
        ], 120, outputs=["env.json"]),
        Step("tests", "kernel, attention and runtime tests, compiled on the GPU", [
            [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={work / 'tests.xml'}",
             "tests/kernels", "tests/attention", "tests/runtime", "tests/native",
             "--ignore=tests/kernels/test_aot.py"],  # the aot step runs that
        ], 600, skip=lambda: _has("pytest"), outputs=["tests.xml"]),
        Step("aot", "sm_90a static report with this machine's Triton; the compiled CUDA kernels' resources", [
            [py, "-m", "histream_engine.kernels.aot", "--arch", "sm_90a", "--out", str(work / "aot")],
            [py, "-m", "histream_engine.native.resources"],
        ], 300, outputs=["aot/summary.json"]),
        Step("attention", "attention microbenchmark, every backend, both resolutions", [
            [py, "bench/attention.py", "--resolution", res, "--out", str(work / f"attention-{res}.json")]
            for res in ("1088x1920", "544x960")
        ], 400, outputs=["attention-1088x1920.json", "attention-544x960.json"]),
        Step("vae", "1080p latency with each decoder (Wan VAE, TAEHV) decoding every chunk (histream_plus, bf16); both alone", [
            bench + ["--schedules", "histream_plus", "--vae", "wan", "tae", "--no-baseline", "--out", str(work / "bench-vae.json")],
            [py, "-m", "bench.vae", "--resolutions", "1920x1088", "--dtype", "bfloat16", "--latent-frames", "3", "--repeats", "3",
             "--out", str(work / "vae-decoders.json")],
        ], 540, outputs=["bench-vae.json", "vae-decoders.json"]),
        Step("bench", "1080p latency per frame, sliding-window schedules, eager, with a profile of each last chunk", [
            bench + ["--schedules", *SLIDING_WINDOW_SCHEDULES, "--no-baseline", "--profile", "--out", str(work / "bench-eager.json")],
        ], 400, outputs=["bench-eager.json"]),
        Step("graphs", "the same with CUDA graphs", [
            bench + ["--schedules", *SLIDING_WINDOW_SCHEDULES, "--no-baseline", "--cuda-graphs", "--out", str(work / "bench-graphs.json")],
        ], 300, outputs=["bench-graphs.json"]),
        Step("live", f"a live 1080p stream for {LIVE_MINUTES} minutes with a prompt switch every 20 chunks: memory flat, drift < 5%", [
            [py, "-m", "bench", "--live", "--preset", "1080p-1.3b", "--schedule", "histream_plus", "--attention", "auto",
             "--minutes", str(LIVE_MINUTES), "--switch-every", "20", "--out", str(work / "bench-live.json")],
        ], int(60 * LIVE_MINUTES) + 240, outputs=["bench-live.json"]),
        Step("bench_full", "1080p latency per frame, full-cache schedules (self_forcing, no_agsw), eager, Wan2.1 baseline", [
            bench + ["--schedules", *FULL_CACHE_SCHEDULES, "--out", str(work / "bench-full.json")],
        ], 590, outputs=["bench-full.json"]),
        Step("fp8", "FP8: its numerics tests compiled on the GPU, then the 1080p bench in bf16 and with --precision fp8", [
            [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={work / 'fp8-tests.xml'}", *FP8_TESTS],
            bench + ["--schedules", *FP8_SCHEDULES, "--no-baseline", "--out", str(work / "bench-bf16.json")],
            bench + ["--schedules", *FP8_SCHEDULES, "--no-baseline", "--precision", "fp8", "--out", str(work / "bench-fp8.json")],
        ], 590, skip=lambda: _fp8_reason() or _has("pytest"), outputs=["fp8-tests.xml", "bench-bf16.json", "bench-fp8.json"]),
        Step("multi_gpu", "one stream on every visible GPU (Ulysses over NCCL): its CUDA-graph test, then the 1080p bench on N ranks", [
            [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={work / 'multi-gpu-tests.xml'}",
             "tests/runtime/test_parallel.py"],
            [py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torch.cuda.device_count()}", "-m",
             "histream_engine", *bench[2:], "--parallel", "ulysses", "--schedules", "histream", "histream_plus", "--no-baseline",
             "--out", str(work / "bench-multi-gpu.json")],
        ], 590, skip=_multi_gpu_reason, outputs=["multi-gpu-tests.xml", "bench-multi-gpu.json"]),
        Step("tensorrt", "TensorRT: its GPU tests, then histream_plus at 1080p through bf16 engines of the bench's own model", [
            [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/graphs/test_tensorrt_gpu.py"],
            [py, "-m", "histream_engine.cli", "export", "--preset", "wan2.1-1.3b", "--dtype", "bfloat16", "--device", "cuda",
             "--schedule", "histream_plus", "--height", "1088", "--width", "1920", "--frames", str(frames), "--out", str(work / "onnx")],
            [py, "-m", "histream_engine.cli", "build-trt", "--onnx", str(work / "onnx"), "--precision", "bf16",
             "--out", str(work / "tensorrt")],
            bench[:-2] + ["--dit", "tensorrt", "--engine-dir", str(work / "tensorrt"), "--schedules", "histream_plus",
                          "--no-baseline", "--out", str(work / "bench-tensorrt.json")],
        ], 590, skip=lambda: _has("tensorrt"), outputs=["bench-tensorrt.json"]),
    ]


def write_env(path: Path) -> None:
    from histream_engine import attention_backends, dit_backends

    import triton

    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "capability": list(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None,
        "sms": torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else None,
        "attention_backends": [{"name": n, "available": ok, "reason": why} for n, ok, why in attention_backends()],
        "dit_backends": [{"name": n, "available": ok, "reason": why} for n, ok, why in dit_backends()],
        "optional_packages": {m: _has(m) is None for m in ("flash_attn", "diffusers", "transformers", "pytest", "matplotlib",
                                                            "pybind11", "onnxruntime", "tensorrt")},
        "git_commit": git_commit(REPO),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


def run_step(step: Step, work: Path, log) -> dict:
    """Runs a step's commands in order; the first failure or the time limit ends the step."""
    reason = step.skip()
    if reason:
        log(f"[{step.name}] skipped: {reason}")
        return {"status": "skipped", "reason": reason, "seconds": 0.0}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels, never the interpreter
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.perf_counter()
    with open(work / f"{step.name}.log", "w") as out:
        for cmd in step.commands:
            left = step.timeout - (time.perf_counter() - t0)
            log(f"[{step.name}] $ {shlex.join(cmd)}")
            out.write(f"$ {shlex.join(cmd)}\n")
            out.flush()
            if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
                log(f"[{step.name}] skipped: {cmd[0]} is not on this machine")
                continue
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                log(f"[{step.name}] TIMED OUT after {step.timeout} s (log: {step.name}.log)")
                return {"status": "timed out", "seconds": time.perf_counter() - t0}
            if rc != 0:
                log(f"[{step.name}] FAILED with exit code {rc} (log: {step.name}.log)")
                return {"status": "failed", "exit_code": rc, "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    log(f"[{step.name}] ok in {seconds:.0f} s")
    return {"status": "ok", "seconds": seconds}


# ---------- the summary ---------------------------------------------------------------------------

def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarise(work: Path, statuses: dict) -> tuple[dict, str]:
    facts: dict = {"steps": statuses}
    lines = ["# GPU suite", ""]
    env = _load(work / "env.json")
    if env:
        facts["env"] = env
        lines += [f"{env['device']} (sm_{''.join(map(str, env['capability'] or []))}, {env['sms']} SMs), torch {env['torch']}, "
                  f"CUDA {env['cuda']}, cuDNN {env['cudnn']}, Triton {env['triton']}, commit {env['git_commit']}", ""]
    lines += ["| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {s['status']}{': ' + s['reason'] if s.get('reason') else ''} | {s['seconds']:.0f} |" for n, s in statuses.items()]
    for tag, label in (("tests", "Tests"), ("fp8-tests", "FP8 tests"), ("multi-gpu-tests", "Multi-GPU tests")):
        tests = _junit(work / f"{tag}.xml")
        if tests:
            facts[tag.replace("-", "_")] = tests
            lines += ["", f"{label}: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, {tests['skipped']} skipped"]
    aot = _load(work / "aot" / "summary.json")
    if aot:
        facts["aot_failures"] = aot["failures"]
        lines += ["", f"sm_90a static checks (Triton {aot['triton']}): {len(aot['variants']) - len(aot['failures'])}/{len(aot['variants'])} variants pass"]
    for res in ("1088x1920", "544x960"):
        att = _load(work / f"attention-{res}.json")
        if not att:
            continue
        facts[f"attention_{res}"] = att
        for positions, backends in att["positions"].items():
            lines += ["", f"Attention at {res}, {positions} positions ({att['shape']['dtype']}, Lq {att['shape']['Lq']}, Lk {att['shape']['Lk']}):", "",
                      "| backend | ms | TFLOP/s | pre-pass ms | core TFLOP/s | rel err | err / torch's |", "|---|---|---|---|---|---|---|"]
            for name, r in backends.items():
                if "tflops" in r:
                    pre = f"{r['prepass_seconds'] * 1e3:.3f}" if "prepass_seconds" in r else ""
                    core = f"{r['core_tflops']:.1f}" if "core_tflops" in r else ""
                    ratio = f"{r['err_over_torch']:.2f}" if r.get("err_over_torch") is not None else ""
                    lines.append(f"| {name} | {r['seconds'] * 1e3:.3f} | {r['tflops']:.1f} | {pre} | {core} | {r['rel_err']:.2e} | {ratio} |")
                elif "rel_err" in r:  # run for its error only (the FP8 core's torch model)
                    lines.append(f"| {name} | not timed | | | | {r['rel_err']:.2e} | |")
                else:
                    lines.append(f"| {name} | {r.get('skipped') or r.get('failed')} | | | | | |")
    for tag in ("eager", "graphs", "full", "vae", "bf16", "fp8", "multi-gpu"):
        b = _load(work / f"bench-{tag}.json")
        if not b:
            continue
        facts[f"bench_{tag}"] = {n: {k: r[k] for k in ("seconds_per_frame", "steady_seconds_per_frame", "achieved_tflops",
                                                        "vae_seconds_per_frame", "end_to_end_seconds_per_frame", "run_modes")}
                                 for n, r in b["schedules"].items()}
        lines += ["", f"1080p bench ({tag}: {b['command']}):", "",
                  "| schedule | s/frame | steady s/frame | TFLOP/s | VAE s/frame | end-to-end s/frame |", "|---|---|---|---|---|---|"]
        for n, r in b["schedules"].items():
            vae = f"{r['vae_seconds_per_frame']:.4f}" if r["vae_seconds_per_frame"] is not None else ""
            lines.append(f"| {n} | {r['seconds_per_frame']:.4f} | {r['steady_seconds_per_frame']:.4f} | {r['achieved_tflops']:.1f} | "
                         f"{vae} | {r['end_to_end_seconds_per_frame']:.4f} |")
        for n, r in b["schedules"].items():
            for d in (r.get("decoders") or {}).values():
                facts[f"bench_{tag}"][n][f"decoder_{d['name']}"] = d
                lines.append(f"\n{n} with {d['name']}: decode {d['vae_seconds_per_frame']:.4f} s/frame, end to end "
                             f"{d['end_to_end_seconds_per_frame']:.4f} s/frame ({100 * d['decoder_fraction']:.0f}% decoding)")
    bf16, fp8 = _load(work / "bench-bf16.json"), _load(work / "bench-fp8.json")
    if bf16 and fp8:
        facts["fp8_speedup"] = {n: bf16["schedules"][n]["seconds_per_frame"] / r["seconds_per_frame"]
                                for n, r in fp8["schedules"].items() if n in bf16["schedules"]}
        lines += ["", f"FP8 ({fp8['attention']}, cache {fp8['kv_dtype']}, linears {fp8['linear_dtype']}) against bf16 "
                  f"({bf16['attention']}), same run: " + ", ".join(f"{n} {x:.2f}x" for n, x in facts["fp8_speedup"].items())]
    multi = _load(work / "bench-multi-gpu.json")
    if multi:
        facts["multi_gpu"] = {n: r["parallel"] for n, r in multi["schedules"].items()}
        lines += ["", f"Sequence parallel on {multi['parallel']['world_size']} GPUs: " + ", ".join(
            f"{n} {r['seconds_per_frame']:.4f} s/frame, {r['parallel']['bytes_sent_per_chunk'] / 2**20:.0f} MiB sent per chunk and rank "
            f"(model {r['parallel']['bytes_sent_per_chunk_model'] / 2**20:.0f})" for n, r in multi["schedules"].items())]
    alone = _load(work / "vae-decoders.json")
    if alone:
        facts["vae_decoders"] = alone["rows"]
        lines += ["", f"Decoders alone ({alone['command']}):", ""] + [
            f"- {r['decoder']} {r['width']}x{r['height']}: {r['seconds_per_frame']:.4f} s/frame, {r['achieved_gflops'] / 1e3:.1f} TFLOP/s"
            for r in alone["rows"]]
    live = _load(work / "bench-live.json")
    if live:
        cs, rss = live["chunk_seconds"], live["rss_bytes"]
        facts["live"] = {"chunks": live["chunks"], "drift": cs["drift"], "rss_growth_after_warmup_bytes": live["rss_growth_after_warmup_bytes"],
                         "switch_seconds": live["switches"]["median_seconds"], "flat": abs(cs["drift"]) < 0.05}
        lines += ["", f"Live 1080p ({live['command']}): {live['chunks']} chunks, first tenth {cs['first_tenth_median']:.4f} s, "
                  f"last tenth {cs['last_tenth_median']:.4f} s, drift {100 * cs['drift']:+.1f}% ({'within' if abs(cs['drift']) < 0.05 else 'OVER'} "
                  f"5%), RSS {rss['start'] / 2**20:.0f} -> {rss['end'] / 2**20:.0f} MiB, {live['switches']['count']} switches of "
                  f"{live['switches']['median_seconds'] or 0:.3f} s"]
    return facts, "\n".join(lines) + "\n"


def _junit(path: Path) -> dict | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"], "failed": counts["failures"],
            "errors": counts["errors"], "skipped": counts["skipped"], "failing": failed}


def write_results(work: Path, out: Path, statuses: dict) -> str:
    facts, md = summarise(work, statuses)
    (work / "summary.md").write_text(md)
    (out / "summary.md").write_text(md)
    (out / "summary.json").write_text(json.dumps(facts, indent=1, default=str))
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="gpu_suite")
    return md


def main(argv=None) -> int:
    p = make_parser("bench/gpu_suite.sh", __doc__)
    p.add_argument("--dry-run", action="store_true", help="print the plan and every command; run nothing")
    p.add_argument("--steps", default=",".join(STEP_NAMES), help=f"comma-separated, from {','.join(STEP_NAMES)} (default: all, in that order)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"video frames for the 1080p bench (default {DEFAULT_FRAMES}; 81 is the paper's)")
    p.add_argument("--out", type=Path, help="result folder (default $OUT/gpu_suite on the device machine, else bench/results/gpu-suite-<date>)")
    p.add_argument("--write-env", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write_env:
        write_env(args.write_env)
        return 0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEP_NAMES))
    if unknown or not steps:
        p.error(f"unknown step(s) {unknown}; choose from {','.join(STEP_NAMES)}")
    if args.frames < 1 or (args.frames - 1) % 4 or ((args.frames - 1) // 4 + 1) % 3:
        p.error(f"--frames must be 4k+1 with (frames - 1) / 4 + 1 divisible by 3 (e.g. 57, 81), got {args.frames}")
    out = args.out or (Path(os.environ["OUT"]) / "gpu_suite" if os.environ.get("OUT") else
                       REPO / "bench" / "results" / f"gpu-suite-{time.strftime('%Y-%m-%d-%H%M')}")
    work = Path(tempfile.mkdtemp(prefix="histream-gpu-suite-")) if not args.dry_run else out / "raw"
    chosen = [s for s in plan(args.frames, work) if s.name in steps]

    if args.dry_run:
        print(f"gpu suite plan: {len(chosen)} steps, results to {out}")
        for s in chosen:
            reason = s.skip()
            print(f"\n[{s.name}] {s.what} (time limit {s.timeout} s){'; would skip here: ' + reason if reason else ''}")
            for cmd in s.commands:
                print("  $ " + shlex.join(cmd))
        print(f"\nthen: {out}/summary.md, summary.json, suite.log and results.tar.gz (every log, JSON and compiled kernel)")
        return 0
    if not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU is visible; this suite is for a lent H100/H200 (docs/gpu-suite.md). "
              "--dry-run prints its plan.", file=sys.stderr)
        return 2

    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "suite.log", "w")

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    log(f"gpu suite: steps {','.join(steps)}, {args.frames} frames, work folder {work}, results to {out}")
    statuses = {}
    for s in chosen:
        statuses[s.name] = run_step(s, work, log)
        md = write_results(work, out, statuses)  # after every step: a call cut off at its limit still brings back the rest
    log(f"wrote {out}/summary.md, summary.json, results.tar.gz")
    log_file.close()
    print("\n" + md)
    return 0 if all(s["status"] in ("ok", "skipped") for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
