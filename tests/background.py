"""Expensive session products built by subprocesses while the tests run, on the core the test process leaves idle.

The suite computes mostly on one thread, and a few fixtures are long single-threaded jobs whose inputs are fixed:
the sm_90a compile of every kernel variant, and the ONNX exports the graph and bench tests read. Once collection shows a test
will need one (``JOBS``: by the fixture that waits for it), the job starts in a subprocess, one job at a time, and
the modules that wait for them run last (``run_last``), so the jobs have the rest of the suite's time to finish;
the fixture then waits for its result instead of computing it. A job's product is the one the fixture would have
made: the same command, or the same function on the same seeded model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
SLOW = os.environ.get("HISTREAM_SLOW_TESTS") == "1"


@dataclass
class Job:
    fixture: str  # the fixture that waits for this job: the job runs when a collected test uses it
    command: Callable[[Path], list[str]]  # the subprocess, given the job's own empty folder
    compiles: bool = False  # compiles kernels for a GPU: without the interpreter (TRITON_INTERPRET), own Triton cache
    future: Future | None = field(default=None, repr=False)
    started_by: str | None = None  # "collection" (in the background, as meant) or "fixture" (the test waits for all of it)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


# In the order their modules run, last in the session (``run_last``): tests/bench, tests/graphs, tests/kernels.
JOBS = {
    "cli_tiny_export": Job("cli_tiny_export", lambda out: python(
        "-m", "histream_engine", "export", "--preset", "tiny", "--schedule", "two_step", "--height", "64", "--width", "64",
        "--frames", "9", "--out", str(out / "graphs"))),
    "graph_exports": Job("exports", lambda out: python(str(HERE / "graphs" / "export_jobs.py"), "exports", str(out))),
    "fp8_export": Job("fp8_export", lambda out: python(str(HERE / "graphs" / "export_jobs.py"), "fp8", str(out))),
    "aot": Job("aot_summary", lambda out: python(
        "-m", "histream_engine.kernels.aot", "--arch", "sm_90a", "--out", str(out), "--jobs", "1", *(["--all-fp8"] if SLOW else [])),
        compiles=True),
}

_runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background-fixtures")  # one job at a time: one spare core
_root: Path | None = None
_running: list[subprocess.Popen] = []  # the job's process while it runs, for ``finish`` to stop


def run_last(items: list) -> list:
    """``items`` with every module that waits for a job moved to the end (in their order), the rest as they were."""
    waiting = {job.fixture for job in JOBS.values()}
    late = {item.module.__name__ for item in items if waiting & set(getattr(item, "fixturenames", ()))}
    return [i for i in items if i.module.__name__ not in late] + [i for i in items if i.module.__name__ in late]


def start(fixtures_in_use: set[str]) -> None:
    """Start, in order, every job whose fixture a collected test uses."""
    for name, job in JOBS.items():
        if job.fixture in fixtures_in_use and job.future is None:
            job.future, job.started_by = _runner.submit(_run, name, job), "collection"


def result(name: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The job's finished process (exit code, stdout, stderr) and its folder; run now if it was not started, which
    ``in_foreground`` then reports."""
    job = JOBS[name]
    if job.future is None:
        job.future, job.started_by = _runner.submit(_run, name, job), "fixture"
    return job.future.result()


def in_foreground() -> list[str]:
    """The jobs a fixture had to start itself: collection did not see that a test needs them (``Job.fixture`` is not
    the fixture that waits), so a test sat through the whole job instead of the rest of the suite hiding it."""
    return [name for name, job in JOBS.items() if job.started_by == "fixture"]


def _run(name: str, job: Job) -> tuple[subprocess.CompletedProcess, Path]:
    global _root
    _root = _root or Path(tempfile.mkdtemp(prefix="histream-test-jobs-"))
    out = _root / name
    out.mkdir()
    env = dict(os.environ)
    if job.compiles:
        env.pop("TRITON_INTERPRET", None)  # the interpreter does not compile
        env["TRITON_CACHE_DIR"] = str(out / "triton-cache")
    command = job.command(out)
    popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=HERE.parent)
    _running.append(popen)
    try:
        stdout, stderr = popen.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        popen.kill()
        stdout, stderr = popen.communicate()
        stderr += "\n(background job killed after 900 s)"
    finally:
        _running.remove(popen)
    return subprocess.CompletedProcess(command, popen.returncode, stdout, stderr), out


def finish() -> None:
    """At the session's end: drop jobs not started, stop the one running (a session cut short needs none of them)."""
    _runner.shutdown(wait=False, cancel_futures=True)
    for popen in list(_running):
        popen.kill()
    _runner.shutdown(wait=True)
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)
