"""`histream serve --ray` from the command line, as a user runs it: a subprocess that joins the session's cluster with
--ray-address, serves the tiny model on one replica, runs a stream, makes a second server on the same cluster exit 2
with the reason, and stops on SIGINT with exit code 0 and its application gone from the cluster. About 20 s on 2 cores
(two Python processes that import torch and Ray, and a replica's start): HISTREAM_SLOW_TESTS=1."""

import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("HISTREAM_SLOW_TESTS") != "1",
                                reason="starts the CLI twice and a replica, about 20 s: HISTREAM_SLOW_TESTS=1")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from histream_engine.serve.ray.deploy import APP_NAME  # noqa: E402

from ray_cluster import ray_cluster, take_over  # noqa: E402,F401 - the session's one Ray cluster
from test_ray import SHORT, start, wait_for, watch  # noqa: E402


def histream_serve(address: str, port: int, log) -> subprocess.Popen:
    argv = [sys.executable, "-m", "histream_engine.cli", "serve", "--ray", "--ray-address", address, "--replicas", "1",
            "--cpus-per-replica", "0.5", "--device", "cpu", "--port", str(port), "--max-frames", "45", "--max-side", "128"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def lines_of(proc: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return lines


def test_the_cli_joins_a_cluster_serves_a_stream_and_stops_cleanly(ray_cluster, tmp_path):
    take_over()  # the CLI deploys its own application, as on a real cluster
    address, port = ray.get_runtime_context().gcs_address, int(ray_cluster.rsplit(":", 1)[1])
    with open(tmp_path / "stderr.txt", "w") as log:
        proc = histream_serve(address, port, log)
    try:
        lines = lines_of(proc)
        said = [lines.get(timeout=120) for _ in range(2)]
        assert said[0].startswith("histream serve --ray: the embedded tiny demo model on Ray Serve"), said
        assert said[1].startswith(f"open {ray_cluster}/"), said  # the address the cluster's Serve really listens on
        info = wait_for(lambda: (r := httpx.get(ray_cluster + "/api/info", timeout=30)).status_code == 200
                        and r.json()["replicas"] and r.json(), 60, "the CLI's replica in /api/info")
        assert info["model"].endswith("on Ray Serve") and info["limits"]["max_frames"] == 45 and info["decoder"] == "wan"
        events, frames = watch(ray_cluster, start(ray_cluster, SHORT))
        assert events[-1]["type"] == "done" and frames == 21, events[-1]

        second = subprocess.run(histream_serve(address, port, subprocess.PIPE).args, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"already serves an application named '{APP_NAME}'" in second.stderr.splitlines()[-1]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert lines.get(timeout=5).startswith("histream serve --ray: stopped")
        assert APP_NAME not in serve.status().applications  # the cluster's Serve stays, without this application
    finally:
        if proc.poll() is None:
            proc.kill()
