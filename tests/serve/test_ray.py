"""histream serve --ray on a local CPU Ray cluster with the tiny model: concurrent streams over two replicas, each
complete and in order; a replica killed mid-stream fails only its stream and is replaced; bad requests as plain
serve answers them; the --gpus-per-replica refusal."""

import json
import threading
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
websockets_sync = pytest.importorskip("websockets.sync.client")

from histream_engine import cli  # noqa: E402
from ray_cluster import ray_cluster  # noqa: E402,F401 - the session's one Ray cluster
from histream_engine.serve.jobs import Limits  # noqa: E402
from histream_engine.serve.ray_app import Scaling, deploy  # noqa: E402

SHORT = {"frames": 21, "width": 64, "height": 64, "schedule": "histream"}  # 2 chunks: 9 + 12 frames
LONG = {"frames": 45, "width": 96, "height": 96, "schedule": "self_forcing"}  # 4 chunks
SPEC = {"model_dir": None, "checkpoint": "", "dtype": "float32", "device": "cpu", "attention": "torch", "text_encoder": False}


@pytest.fixture(scope="module")
def server(ray_cluster):
    registry = deploy(SPEC, "tiny", Limits(max_frames=45, max_side=128, max_queue=4), Scaling(replicas=2, cpus_per_replica=0.5))
    yield ray_cluster
    del registry


def watch(base, stream_id, on_chunk=None):
    """Every message of a stream's WebSocket until its end: (events, number of JPEG frames)."""
    events, frames = [], 0
    with websockets_sync.connect(base.replace("http", "ws") + f"/api/streams/{stream_id}/ws", open_timeout=30) as ws:
        while True:
            msg = ws.recv(timeout=120)
            if isinstance(msg, bytes):
                assert msg[:2] == b"\xff\xd8"  # a JPEG
                frames += 1
                continue
            event = json.loads(msg)
            events.append(event)
            if event["type"] == "chunk" and on_chunk is not None:
                on_chunk(event)
            if event["type"] in ("done", "cancelled", "failed"):
                return events, frames


def start(base, body):
    r = httpx.post(base + "/api/streams", json=body, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_four_concurrent_streams_complete_in_order_on_both_replicas(server):
    results = {}

    def one(i):
        sid = start(server, SHORT)
        results[sid] = watch(server, sid)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == 4
    replicas = set()
    for sid, (events, frames) in results.items():
        chunks = [e for e in events if e["type"] == "chunk"]
        assert [c["index"] for c in chunks] == [0, 1] and frames == 21 and events[-1]["type"] == "done"
        status = httpx.get(server + f"/api/streams/{sid}").json()
        assert status["state"] == "done" and status["chunks"] == 2
        replicas.add(status["replica"])
        video = httpx.get(server + status["video"])
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert len(replicas) == 2  # max_ongoing_requests=1: four streams cannot all run on one replica
    info = httpx.get(server + "/api/info").json()
    assert {r["replica"] for r in info["replicas"]} >= replicas and all(r["device"] == "CPU" for r in info["replicas"])


def test_a_killed_replica_fails_only_its_stream_and_is_replaced(server):
    victim, other = start(server, LONG), start(server, LONG)

    def kill(event):
        if event["index"] == 0:
            replica = httpx.get(server + f"/api/streams/{victim}").json()["replica"]
            name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(replica))
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("other", watch(server, other)))
    t.start()
    events, _ = watch(server, victim, on_chunk=kill)
    t.join(timeout=180)
    assert events[-1]["type"] == "failed" and "replica lost" in events[-1]["error"]
    assert box["other"][0][-1]["type"] == "done"
    assert httpx.get(server + f"/api/streams/{victim}").json()["state"] == "failed"
    t0 = time.time()
    while True:  # Serve replaces the replica; the next stream runs
        sid = start(server, SHORT)
        events, frames = watch(server, sid)
        if events[-1]["type"] == "done":
            break
        assert time.time() - t0 < 60, events[-1]
    assert frames == 21


def test_bad_requests_get_a_reason(server):
    over = httpx.post(server + "/api/streams", json={**SHORT, "frames": 81}, timeout=30)
    assert over.status_code == 400 and "limit of 45" in over.json()["detail"]
    engine = httpx.post(server + "/api/streams", json={**SHORT, "frames": 20}, timeout=30)
    assert engine.status_code == 400 and "frames" in engine.json()["detail"]
    assert httpx.post(server + "/api/streams", json={**SHORT, "colour": 1}, timeout=30).status_code == 422
    assert httpx.get(server + "/api/streams/nope").status_code == 404
    events, _ = watch(server, "nope")
    assert events == [{"type": "failed", "error": "no stream 'nope'"}]


def test_gpus_per_replica_other_than_one_is_refused(capsys):
    assert cli.main(["serve", "--ray", "--gpus-per-replica", "2"]) == 2
    assert "needs sequence parallelism" in capsys.readouterr().err
