"""histream serve --ray --replicas auto: Ray Serve adds a replica under load and takes it away when idle. Short delays
and metric intervals in the test config keep it to seconds. The graceful shutdown is
long: Serve may pick the replica still running the last stream to scale down, which then waits for that stream to
end (with 1 s it was killed mid-stream on a loaded machine, and the stream failed). It waits on Ray's own autoscaler
for about 40 s, so it runs with HISTREAM_SLOW_TESTS=1; the default suite deploys --replicas 2 (test_ray.py)."""

import os

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("HISTREAM_SLOW_TESTS") != "1",
                                reason="HISTREAM_SLOW_TESTS=1 (about 40 s of Ray Serve's autoscaler)")

serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from histream_engine.serve.protocol import Limits  # noqa: E402
from histream_engine.serve.ray.deploy import APP_NAME, ENGINE, Scaling, deploy  # noqa: E402

from ray_cluster import SPEC, ray_cluster, take_over  # noqa: E402,F401 - the session's one Ray cluster
from test_ray import LONGER, concurrently, info, start, wait_for, watch  # noqa: E402

FAST = Scaling(None, min_replicas=1, max_replicas=2, cpus_per_replica=0.5, upscale_delay_s=0.5, downscale_delay_s=1.0,
               metrics_interval_s=0.2, look_back_period_s=0.5, health_check_period_s=1.0, graceful_shutdown_timeout_s=60.0,
               graceful_shutdown_wait_loop_s=0.2)


def running_replicas() -> int:
    return serve.status().applications[APP_NAME].deployments[ENGINE].replica_states.get("RUNNING", 0)


def test_replicas_scale_up_under_load_and_back_down(ray_cluster):
    take_over()  # this test deploys its own application
    registry = deploy(SPEC, "tiny", Limits(max_frames=81, max_side=256, max_queue=4), FAST)
    try:
        assert running_replicas() == 1 and len(info(ray_cluster)["replicas"]) == 1
        counts = []

        def loaded():
            counts.append(running_replicas())
            return counts[-1] == 2

        def load():  # four 7-chunk streams at once on one replica: three wait, and the autoscaler sees them
            return concurrently(*[lambda: watch(ray_cluster, start(ray_cluster, LONGER)) for _ in range(4)])

        results = concurrently(load, lambda: wait_for(loaded, 60, "a second replica under load"))[0]
        assert [events[-1]["type"] for events, _ in results] == ["done"] * 4, [events[-1].get("error") for events, _ in results]
        assert counts[0] == 1 and counts[-1] == 2
        wait_for(lambda: running_replicas() == 1, 60, "back to one replica when idle")
        wait_for(lambda: len(info(ray_cluster)["replicas"]) == 1, 10, "/api/info down to the one replica left")
    finally:
        del registry  # the next test that deploys replaces this application
