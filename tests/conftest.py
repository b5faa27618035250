import os
import sys

import pytest
import torch

# Kernels read TRITON_INTERPRET when they are defined, so it is set before anything imports them:
# without a GPU they run in Triton's CPU interpreter (a logic check; rerun compiled on a GPU).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import background
from histream_engine import WanConfig, WanDiT
from histream_engine.numerics import rel_err  # noqa: F401 - the tests import it from here

# Triton versions whose CPU interpreter cannot run the attention cores (bf16 and FP8), and what it raises: the key
# loop ``range(0, full, BLOCK_N)`` has a runtime bound, and over TensorDescriptor loads Triton 3.6's interpreter
# fails on it. Compiled on a GPU that path is another one; Triton 3.9's interpreter runs the cores.
CORES_FAIL_IN_INTERPRETER = {
    (3, 6): "TypeError: only 0-dimensional arrays can be converted to Python scalars (kernels/attention_core.py:94, the "
            "key loop `range(0, full, BLOCK_N)` with a runtime bound over TensorDescriptor loads)",
}


def triton_version() -> tuple[int, int] | None:
    """(major, minor) of the installed Triton, or None without one (read from its metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version("triton").split(".")[:2])
    except PackageNotFoundError:
        return None


def skip_where_the_interpreter_cannot_run_the_cores() -> None:
    """Skips the calling test where the attention cores would run in a Triton interpreter known to fail on them
    (CORES_FAIL_IN_INTERPRETER), naming the version and the error; compiled on a GPU, or on any other Triton, it runs."""
    found = triton_version()
    if os.environ.get("TRITON_INTERPRET") == "1" and (error := CORES_FAIL_IN_INTERPRETER.get(found)):
        pytest.skip(f"Triton {found[0]}.{found[1]}'s interpreter cannot run the attention cores: {error}")


def random_dit(config: WanConfig | str = "tiny", seed: int = 0, std: float = 0.1, dtype=torch.float32,
               device: torch.device | str = "cpu") -> WanDiT:
    """A DiT with every weight drawn N(0, std^2): larger than default init so that errors anywhere show. The weights
    are drawn on the CPU, so that a seed gives the same model on every device."""
    torch.manual_seed(seed)
    dit = WanDiT(config)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, std)
    return dit.cast(dtype).eval().requires_grad_(False).to(device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the kernel, attention, runtime and native tests build their inputs (tests/test_device_fixture.py holds
    them to it): the GPU where there is one, kernels compiled; else the CPU, kernels in Triton's interpreter
    (TRITON_INTERPRET=1, set above). On the GPU float32 stays float32 (no TF32 in matmuls or convolutions), so the
    tolerances written for the CPU hold there."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda")


@pytest.fixture
def tiny_dit() -> WanDiT:
    """On the CPU, for the model and checkpoint tests; the kernel, attention, runtime and native tests take
    ``device_dit`` (tests/test_device_fixture.py holds them to it)."""
    return random_dit("tiny")


@pytest.fixture
def device_dit(device) -> WanDiT:
    """``tiny_dit`` on the ``device`` fixture's device."""
    return random_dit("tiny", device=device)


@pytest.fixture(scope="session")
def cli_tiny_export():
    """`histream export --preset tiny` of `two_step` at 64x64, 9 frames (4 graphs of the bench preset's own random
    weights), run once, in the background (``background``), for every test that reads an export folder written by the
    CLI: (exit code, folder, stdout). Tests read it and never write into it."""
    proc, out = background.result("cli_tiny_export")
    return proc.returncode, out / "graphs", proc.stdout


_LAST_RAY_TEST: list[str] = []  # the node id of the last test using the session's Ray cluster

# The long tests: tens of seconds each, or minutes of a core beside them. The default run skips them so that it takes a
# few minutes on 2 cores, in parallel (README's command: pytest-xdist, ``-n auto``); .ci/run runs them after it, in one
# process (``-m long``). Those on the session's Ray cluster and those that wait for a background job are long by that
# alone; the others carry ``@pytest.mark.long``.
LONG = os.environ.get("HISTREAM_LONG_TESTS") == "1" or os.environ.get("HISTREAM_SLOW_TESTS") == "1"
LONG_BY_FIXTURE = {"ray_cluster"} | {job.fixture for job in background.JOBS.values()}
SKIP_LONG = pytest.mark.skip(reason="a long test: HISTREAM_LONG_TESTS=1 runs it, in one process (.ci/run does, after "
                                    "the default run)")


def pytest_configure(config):
    if LONG and (os.environ.get("PYTEST_XDIST_WORKER") or getattr(config.option, "numprocesses", None)):
        raise pytest.UsageError("the long tests share one Ray cluster and one set of background jobs: run them in one "
                                "process (add -n 0: HISTREAM_LONG_TESTS=1 python -m pytest -q -n 0 -m long)")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)  # a core per worker: two workers of two threads each run slower than one


def is_long(item) -> bool:
    return item.get_closest_marker("long") is not None or bool(LONG_BY_FIXTURE & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by mark
def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_long(item):
            item.add_marker(pytest.mark.long)  # so that ``-m long`` selects those long by their fixtures too
            if not LONG:
                item.add_marker(SKIP_LONG)
    items[:] = background.run_last(items)
    _LAST_RAY_TEST[:] = [i.nodeid for i in items if "ray_cluster" in getattr(i, "fixturenames", ())][-1:]


def pytest_runtest_teardown(item, nextitem):
    if _LAST_RAY_TEST == [item.nodeid]:
        sys.modules["ray_cluster"].shutdown_cluster()  # the module the Ray tests import, which holds the cluster


def pytest_collection_finish(session):
    """Start the background jobs (``background.JOBS``) the collected tests will wait for."""
    if not session.config.option.collectonly:
        running = [item for item in session.items if LONG or not is_long(item)]
        background.start({f for item in running for f in getattr(item, "fixturenames", ())})


def pytest_sessionfinish(session):
    late = background.in_foreground()
    background.finish()
    if late:  # the suite's time depends on these jobs running beside the tests: a regression fails the run
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        sys.stderr.write(f"\nbackground jobs ran in the foreground: {', '.join(late)}; the fixture each waits in must be "
                         "the one its Job names in tests/background.py\n")
