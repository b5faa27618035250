"""/v1/videos on ``histream serve --ray`` (the session's local cluster, two replicas of the tiny model), driven by the
official ``openai`` SDK over HTTP through Serve's proxy: the same checks as plain serve (openai_checks.py), a video's
stream run on a replica that reads its inputs from the store actor and hands its mp4 and final state back, and (with
HISTREAM_SLOW_TESTS=1) a redeployment over the same --data-dir, behind an API key, that lists and extends the stored
videos."""

import os
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("multipart")

import openai_checks as checks  # noqa: E402
from openai_checks import openai  # noqa: E402
from histream_engine.video import FPS  # noqa: E402
from ray_cluster import (ray_cluster, ray_server, server_config, shared_data_dir, take_over,  # noqa: E402,F401
                         video_options)

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # SDK 3.63 on every videos call


def sdk(base, key="unused") -> "openai.OpenAI":
    checks.quiet_sdk()
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(ray_server):
    return sdk(ray_server)


@pytest.fixture(scope="module")
def first(client):
    return checks.check_create_poll_and_download(client)


def test_create_and_poll_then_download_over_ray(first):
    assert first.status == "completed"


def test_list_pages_and_delete_over_ray(client):
    checks.check_list_pages_and_delete(client)


def test_extension_by_id_over_ray_is_exact_as_json_and_as_a_form(client):
    checks.check_extend_by_id_is_exact(client, form=False, threads=1)  # a replica of half a CPU: one thread
    checks.check_extend_by_id_is_exact(client, form=True, threads=1)


def test_extension_of_an_upload_input_reference_and_remix_over_ray(client, first):
    checks.check_extend_an_upload(client, first.id)
    checks.check_input_reference_and_remix(client)


def test_bad_inputs_get_the_sdks_exception_classes_over_ray(client, first):
    checks.check_refusals(client, first.id)
    checks.check_a_failed_video_cannot_be_extended(client)
    checks.check_a_full_history_video_cannot_be_extended(client)


@pytest.mark.skipif(os.environ.get("HISTREAM_SLOW_TESTS") != "1",
                    reason="a second deployment (25 s, and the next Ray module deploys again): HISTREAM_SLOW_TESTS=1; plain "
                           "serve's restart test runs by default")
def test_a_redeployed_server_lists_and_extends_the_stored_videos_behind_a_key(client, first, ray_cluster):
    import httpx

    from histream_engine.serve import auth
    from histream_engine.serve.ray.deploy import deploy
    from ray_cluster import DESCRIPTION, SPEC

    data_dir = shared_data_dir()
    take_over(replace=True)  # the next deploy replaces the application in place; its store actor starts again
    limits, scaling, watching = server_config()
    registry = deploy(SPEC, DESCRIPTION, limits, scaling, watching=watching, videos=video_options(data_dir),
                      key_digest=auth.key_digest("ray-key"))
    with pytest.raises(openai.AuthenticationError):
        sdk(ray_cluster, "wrong").videos.list()
    assert httpx.get(f"{ray_cluster}/api/info").status_code == 401 and httpx.get(f"{ray_cluster}/").status_code == 401
    again = sdk(ray_cluster, "ray-key")
    assert first.id in {v.id for v in again.videos.list(limit=100).data}
    body = {"video": {"id": first.id}, "prompt": "more", "seconds": checks.ONE_CHUNK}
    extended = checks.poll(again, again.post("/videos/extensions", body=body, cast_to=openai.types.Video))
    assert extended.status == "completed" and extended.seconds == "1.3125"
    again.videos.delete(first.id)
    assert not (data_dir / "videos" / first.id).exists()
    take_over()  # the next module that needs the shared server deploys it afresh
    del registry


def test_a_video_whose_replica_is_killed_mid_stream_completes_with_every_frame(client):
    """The registry keeps a video's chunks and checkpoints (serve/ray/registry.py), so its stream goes on on another
    replica, and the stored video is every chunk once, whichever replica made it."""
    from test_ray_failover import kill_with_ray  # noqa: PLC0415 - the failover tests' kill, on this module's cluster
    from ray_cluster import shared_registry  # noqa: PLC0415

    video = client.videos.create(prompt="a survivor", seconds="4", size=checks.SIZE)  # 69 frames: 6 chunks
    deadline = time.monotonic() + 120
    while (now := client.videos.retrieve(video.id)).progress == 0 and now.status != "failed":
        assert time.monotonic() < deadline, "no chunk in 120 s"
        time.sleep(0.02)
    busy = [r["replica"] for r in ray.get(shared_registry().replica_info.remote()) if r["state"] == "busy"]
    assert now.status == "in_progress" and len(busy) == 1, (now, busy)
    kill_with_ray(busy[0])
    done = checks.poll(client, video)
    assert done.status == "completed" and done.seconds == video.seconds, done
    assert checks.decode(checks.content(client, video.id)).shape[0] == round(float(video.seconds) * FPS)
