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


def random_dit(config: WanConfig | str = "tiny", seed: int = 0, std: float = 0.1, dtype=torch.float32) -> WanDiT:
    """A DiT with every weight drawn N(0, std^2): larger than default init so that errors anywhere show."""
    torch.manual_seed(seed)
    dit = WanDiT(config)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, std)
    return dit.cast(dtype).eval().requires_grad_(False)


@pytest.fixture
def tiny_dit() -> WanDiT:
    return random_dit("tiny")


@pytest.fixture(scope="session")
def cli_tiny_export():
    """`histream export --preset tiny` of `two_step` at 64x64, 9 frames (4 graphs of the bench preset's own random
    weights), run once, in the background (``background``), for every test that reads an export folder written by the
    CLI: (exit code, folder, stdout). Tests read it and never write into it."""
    proc, out = background.result("cli_tiny_export")
    return proc.returncode, out / "graphs", proc.stdout


_LAST_RAY_TEST: list[str] = []  # the node id of the last test using the session's Ray cluster


def pytest_collection_modifyitems(config, items):
    items[:] = background.run_last(items)
    _LAST_RAY_TEST[:] = [i.nodeid for i in items if "ray_cluster" in getattr(i, "fixturenames", ())][-1:]


def pytest_runtest_teardown(item, nextitem):
    if _LAST_RAY_TEST == [item.nodeid]:
        sys.modules["ray_cluster"].shutdown_cluster()  # the module the Ray tests import, which holds the cluster


def pytest_collection_finish(session):
    """Start the background jobs (``background.JOBS``) the collected tests will wait for."""
    if not session.config.option.collectonly:
        background.start({f for item in session.items for f in getattr(item, "fixturenames", ())})


def pytest_sessionfinish(session):
    background.finish()
