"""The default run leaves out the long tests (tests/conftest.py) and .ci/run runs them after it: these check which are
long, and that the long ones refuse to run in parallel (one Ray cluster and one set of background jobs a run)."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import background
import conftest

REPO = Path(__file__).resolve().parent.parent


def stand_in(*fixtures: str, marked: bool = False):
    return SimpleNamespace(fixturenames=list(fixtures),
                           get_closest_marker=lambda name: object() if marked and name == "long" else None)


def test_the_ray_tests_the_background_jobs_tests_and_the_marked_ones_are_long():
    assert conftest.is_long(stand_in("ray_cluster", "tmp_path"))
    for job in background.JOBS.values():
        assert conftest.is_long(stand_in(job.fixture)), job.fixture
    assert conftest.is_long(stand_in("tmp_path", marked=True))
    assert not conftest.is_long(stand_in("tmp_path", "device"))


def test_the_long_tests_refuse_to_run_in_parallel():
    pytest.importorskip("xdist")
    env = {**os.environ, "HISTREAM_LONG_TESTS": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--co", "tests/test_flops.py"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "run them in one process" in run.stderr and "-n 0" in run.stderr
