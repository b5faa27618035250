"""Live streams in histream serve: no frame count, prompt switches over the WebSocket and REST, the duration limit,
the bounded recording, and switches that are refused or race a cancel (the stream goes on, nothing hangs)."""

import json
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("PIL")
import imageio_ffmpeg  # noqa: E402
import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from histream_engine import host  # noqa: E402
from histream_engine.serve.local.transport import local_app  # noqa: E402
from histream_engine.serve.protocol import Limits  # noqa: E402

LIVE = {"live": True, "width": 32, "height": 32, "schedule": "histream_plus"}  # the smallest: the demo VAE dominates


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    embeds = tmp_path_factory.mktemp("embeds")
    demo = host.tiny_demo("cpu", "torch", 0)
    torch.save(torch.randn(7, demo.engine.dit.config.text_dim), embeds / "other.pt")
    app = local_app(demo, "tiny", Limits(max_frames=45, max_side=128, max_queue=2, max_live_seconds=120, max_record_seconds=1),
                     embeds_dir=embeds)
    with TestClient(app) as c:
        yield c


def run_live(client, job_id, on_chunk):
    """Every event of a live stream until it ends; ``on_chunk(ws, event)`` steers it."""
    events = []
    with client.websocket_connect(f"/api/streams/{job_id}/ws") as ws:
        while True:
            msg = ws.receive()
            if msg.get("bytes") is not None:
                continue
            event = json.loads(msg["text"])
            events.append(event)
            if event["type"] == "chunk":
                on_chunk(ws, event)
            if event["type"] in ("done", "cancelled", "failed"):
                return events


def test_a_live_stream_switches_its_prompt_over_the_websocket_and_keeps_the_last_seconds(client):
    job = client.post("/api/streams", json=LIVE)
    assert job.status_code == 201, job.text
    assert job.json()["request"]["frames"] is None and job.json()["request"]["duration"] == 120

    def steer(ws, event):
        if event["index"] == 0:
            ws.send_json({"type": "prompt", "prompt_embeds": "other.pt", "recache": True})
        if event["index"] == 2:
            ws.send_json({"type": "cancel"})

    events = run_live(client, job.json()["id"], steer)
    chunks = [e for e in events if e["type"] == "chunk"]
    assert [c["index"] for c in chunks][:3] == [0, 1, 2] and len(chunks) <= 4  # a cancel lands after the current chunk
    marked = [c["index"] for c in chunks if c["prompt_switch"]]
    assert len(marked) == 1 and marked[0] in (1, 2)  # the switch lands at the next chunk boundary after it arrived
    assert chunks[marked[0]]["prompt_switch"]["forwards"] == {"low": 1, "high": 1}
    assert any(e["type"] == "prompt" and e["accepted"] for e in events)
    end = events[-1]
    assert end["type"] == "cancelled" and "the last" in end["video_note"] and "at most 1 s" in end["video_note"]
    video = client.get(end["video"])
    assert video.status_code == 200
    path = client.app.state.transport.queue.get(job.json()["id"]).video_path
    frames = imageio_ffmpeg.count_frames_and_secs(str(path))[0]
    assert 0 < frames <= 16 < sum(c["frames"] for c in chunks)


def test_a_bad_prompt_message_is_answered_and_the_stream_goes_on(client):
    job = client.post("/api/streams", json=LIVE).json()

    def steer(ws, event):
        if event["index"] == 0:
            ws.send_json({"type": "prompt", "prompt_embeds": "missing.pt"})
            ws.send_json({"type": "prompt", "recache": "often"})
        if event["index"] == 1:
            ws.send_json({"type": "cancel"})

    events = run_live(client, job["id"], steer)
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert len(errors) == 2 and "no embeddings file 'missing.pt'" in errors[0]
    assert [e["index"] for e in events if e["type"] == "chunk"][:2] == [0, 1] and events[-1]["type"] == "cancelled"


def test_rest_switches_limits_and_a_switch_racing_a_cancel(client):
    assert client.post("/api/streams", json={**LIVE, "duration": 121}).status_code == 400
    assert "live streams" in client.post("/api/streams", json={"frames": 9, "width": 32, "height": 32, "duration": 5}).json()["detail"]
    job = client.post("/api/streams", json={**LIVE, "duration": 1}).json()  # ends by its own duration
    deadline = time.time() + 60
    while client.get(f"/api/streams/{job['id']}").json()["state"] in ("queued", "running"):
        assert time.time() < deadline
        time.sleep(0.05)
    assert client.get(f"/api/streams/{job['id']}").json()["state"] == "done"
    job = client.post("/api/streams", json=LIVE).json()
    ok = client.post(f"/api/streams/{job['id']}/prompt", json={"prompt_embeds": "other.pt", "recache": False})
    assert ok.status_code == 200, ok.text
    assert client.post(f"/api/streams/{job['id']}/prompt", json={"prompt": "text"}).status_code == 400  # no text encoder
    client.delete(f"/api/streams/{job['id']}")
    for _ in range(5):  # switches racing the cancel: accepted or 409, never a hang or a 500
        r = client.post(f"/api/streams/{job['id']}/prompt", json={"prompt_embeds": "other.pt"})
        assert r.status_code in (200, 409)
    deadline = time.time() + 60
    while client.get(f"/api/streams/{job['id']}").json()["state"] in ("queued", "running"):
        assert time.time() < deadline
        time.sleep(0.05)
    assert client.get(f"/api/streams/{job['id']}").json()["state"] == "cancelled"
    assert client.post(f"/api/streams/{job['id']}/prompt", json={"prompt_embeds": "other.pt"}).status_code == 409
    good = client.post("/api/streams", json={"frames": 9, "width": 32, "height": 32}).json()  # and the server still serves
    deadline = time.time() + 60
    while client.get(f"/api/streams/{good['id']}").json()["state"] in ("queued", "running"):
        assert time.time() < deadline
        time.sleep(0.05)
    assert client.get(f"/api/streams/{good['id']}").json()["state"] == "done"
