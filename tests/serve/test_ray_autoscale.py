"""histream serve --ray --replicas auto: Ray Serve adds a replica under load and takes it away when idle (short
delays in the test config). Slow (a replica's start and the downscale delay): HISTREAM_SLOW_TESTS=1."""

import os
import threading
import time

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("HISTREAM_SLOW_TESTS") != "1",
                                reason="autoscaling waits for replicas to start and stop: HISTREAM_SLOW_TESTS=1")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from histream_engine.serve.jobs import Limits  # noqa: E402
from histream_engine.serve.ray_app import APP_NAME, ENGINE, Scaling, deploy  # noqa: E402

from test_ray import LONG, SPEC, start, watch  # noqa: E402
from ray_cluster import ray_cluster  # noqa: E402,F401 - the session's one Ray cluster


def running_replicas() -> int:
    return serve.status().applications[APP_NAME].deployments[ENGINE].replica_states.get("RUNNING", 0)


def wait_for(condition, timeout):
    t0 = time.time()
    while not condition():
        assert time.time() - t0 < timeout
        time.sleep(0.5)


def test_replicas_scale_up_under_load_and_back_down(ray_cluster):
    scaling = Scaling(None, min_replicas=1, max_replicas=2, cpus_per_replica=0.5, upscale_delay_s=1, downscale_delay_s=3)
    registry = deploy(SPEC, "tiny", Limits(max_frames=45, max_side=128, max_queue=4), scaling)
    assert running_replicas() == 1
    ends = []
    threads = [threading.Thread(target=lambda: ends.append(watch(ray_cluster, start(ray_cluster, LONG))[0][-1]["type"]))
               for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: running_replicas() == 2, 90)
    for t in threads:
        t.join(timeout=180)
    assert ends == ["done"] * 3
    wait_for(lambda: running_replicas() == 1, 90)
    del registry
