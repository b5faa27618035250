"""histream serve's JSON API and WebSocket protocol on the tiny demo model: a stream's frames and video, cancel, the
FIFO queue and its positions, bad requests (4xx with a message, never a crash), a watcher's disconnect, WebSocket
messages that are not commands (answered, the oversized one unparsed), and a model going non-finite mid-stream."""

import json
import re
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("PIL")
from fastapi.testclient import TestClient  # noqa: E402

from histream_engine import host  # noqa: E402
from histream_engine.serve.guards import MAX_WS_MESSAGE_CHARS  # noqa: E402
from histream_engine.serve.local.transport import local_app  # noqa: E402
from histream_engine.serve.protocol import Limits  # noqa: E402

SHORT = {"frames": 21, "width": 64, "height": 64, "schedule": "histream"}  # 2 chunks: 9 + 12 frames
LONG = {"frames": 45, "width": 128, "height": 128, "schedule": "self_forcing"}  # 4 chunks, a few seconds


@pytest.fixture(scope="module")
def demo():
    return host.tiny_demo("cpu", "torch", 0)


@pytest.fixture(scope="module")
def client(tmp_path_factory, demo):
    embeds = tmp_path_factory.mktemp("embeds")
    app = local_app(demo, "tiny", Limits(max_frames=45, max_side=128, max_queue=2), embeds_dir=embeds)
    with TestClient(app) as c:
        yield c


def watch(client, job_id, cancel_after=None):
    """Every message of a stream's WebSocket until its end: (events, JPEG frames)."""
    events, frames = [], []
    with client.websocket_connect(f"/api/streams/{job_id}/ws") as ws:
        while True:
            msg = ws.receive()
            if msg.get("bytes") is not None:
                frames.append(msg["bytes"])
                continue
            event = json.loads(msg["text"])
            events.append(event)
            if event["type"] == "chunk" and cancel_after is not None and event["index"] + 1 == cancel_after:
                ws.send_json({"type": "cancel"})
            if event["type"] in ("done", "cancelled", "failed"):
                return events, frames


def wait_idle(client, job_id, timeout=120):
    t0 = time.time()
    while client.get(f"/api/streams/{job_id}").json()["state"] in ("queued", "running"):
        assert time.time() - t0 < timeout, "the stream did not end"
        time.sleep(0.1)


def test_a_stream_sends_each_chunk_then_its_frames_and_offers_the_video(client):
    job = client.post("/api/streams", json=SHORT)
    assert job.status_code == 201
    events, frames = watch(client, job.json()["id"])
    chunks = [e for e in events if e["type"] == "chunk"]
    assert [c["index"] for c in chunks] == [0, 1] and [c["frames"] for c in chunks] == [9, 12]
    assert len(frames) == 21 and all(f[:2] == b"\xff\xd8" for f in frames)  # JPEG
    assert all(c["denoise_seconds"] > 0 and c["cache_bytes"] > 0 and c["forwards"]["low"] == 2 for c in chunks)
    done = events[-1]
    assert done["type"] == "done" and done["chunks"] == 2
    video = client.get(done["video"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4" and video.content[4:8] == b"ftyp"
    assert client.get(f"/api/streams/{job.json()['id']}").json()["state"] == "done"


def test_cancel_stops_a_running_stream_after_its_current_chunk(client):
    job_id = client.post("/api/streams", json=LONG).json()["id"]
    events, frames = watch(client, job_id, cancel_after=1)
    assert events[-1]["type"] == "cancelled" and 1 <= events[-1]["chunks"] < 4
    assert len(frames) == sum(e["frames"] for e in events if e["type"] == "chunk")
    assert client.get(events[-1]["video"]).status_code == 200  # the mp4 of what was shown


def test_streams_wait_in_fifo_order_with_their_positions(client):
    first = client.post("/api/streams", json=LONG).json()
    second = client.post("/api/streams", json=SHORT).json()
    third = client.post("/api/streams", json=SHORT).json()
    assert second["position"] == 1 and third["position"] == 2  # behind the running (or about to run) first
    full = client.post("/api/streams", json=SHORT)
    assert full.status_code == 429 and "already waiting" in full.json()["detail"]
    events, _ = watch(client, third["id"])
    positions = [e["position"] for e in events if e["type"] == "queued"]
    assert positions[0] == 2 and positions[-1] == 0 and positions == sorted(positions, reverse=True)
    assert events[-1]["type"] == "done"
    for job in (first, second):  # both ended before the third started
        assert client.get(f"/api/streams/{job['id']}").json()["state"] == "done"


def test_a_queued_stream_can_be_cancelled_before_it_runs(client):
    running = client.post("/api/streams", json=LONG).json()
    queued = client.post("/api/streams", json=SHORT).json()
    cancelled = client.delete(f"/api/streams/{queued['id']}").json()
    assert cancelled["state"] == "cancelled" and cancelled["chunks"] == 0
    assert client.get(f"/api/streams/{queued['id']}/video.mp4").status_code == 409
    client.delete(f"/api/streams/{running['id']}")
    wait_idle(client, running["id"])


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"frames": "many"}, 422, "valid integer"),
        ({"frames": 21, "colour": "red"}, 422, "Extra inputs are not permitted"),
        ({"frames": 44}, 400, "4k+1"),
        ({"frames": 81}, 400, "over this server's limit of 45"),
        ({"width": 256}, 400, "limit of 128 pixels"),
        ({"height": 72, "width": 64}, 400, "multiple of 32"),
        ({"schedule": "fastest"}, 400, "unknown schedule 'fastest'"),
        ({"prompt": "a red fox"}, 400, "no text encoder"),
        ({"prompt_embeds": "fox.pt"}, 400, "no embeddings file 'fox.pt' on this server"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(client, body, status, message):
    res = client.post("/api/streams", json={**SHORT, **body})
    assert res.status_code == status
    assert message in str(res.json()["detail"])


def test_unknown_streams_are_404(client):
    assert client.get("/api/streams/nope").status_code == 404
    assert client.delete("/api/streams/nope").status_code == 404
    with client.websocket_connect("/api/streams/nope/ws") as ws:
        assert ws.receive_json() == {"type": "failed", "error": "no stream 'nope'"}


def test_a_watcher_that_disconnects_frees_the_engine_after_the_current_chunk(client):
    job_id = client.post("/api/streams", json=LONG).json()["id"]
    with client.websocket_connect(f"/api/streams/{job_id}/ws") as ws:
        while ws.receive().get("text", "").find('"chunk"') < 0:
            pass
    wait_idle(client, job_id)
    status = client.get(f"/api/streams/{job_id}").json()
    assert status["state"] == "cancelled" and status["chunks"] < 4
    events, _ = watch(client, client.post("/api/streams", json=SHORT).json()["id"])
    assert events[-1]["type"] == "done"  # the engine took the next stream


def test_info_and_page(client):
    info = client.get("/api/info").json()
    assert info["model"] == "tiny" and "histream_plus" in info["schedules"] and info["limits"]["max_queue"] == 2
    assert info["decoder"] == "wan" and "info.decoder" in client.get("/").text
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/api/streams" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # nothing loaded from outside this server


def test_messages_that_are_not_commands_are_answered_and_a_silent_disconnect_still_cancels(client):
    job_id = client.post("/api/streams", json=LONG).json()["id"]
    with client.websocket_connect(f"/api/streams/{job_id}/ws") as ws:
        ws.send_text("hello")  # not JSON
        ws.send_json([1, 2])  # JSON, not a command
        ws.send_bytes(b"\x00")
        ws.send_json({"type": "pause"})
        ws.send_text('{"type": "cancel", "pad": "' + "x" * MAX_WS_MESSAGE_CHARS + '"}')  # a cancel, but too big to read
        errors = []
        while len(errors) < 5:
            text = ws.receive().get("text")
            if text is not None and json.loads(text)["type"] == "error":
                errors.append(json.loads(text)["error"])
        assert "not JSON" in errors[0] and "JSON object" in errors[1] and "binary" in errors[2]
        assert "unknown command type 'pause'" in errors[3]
        assert f"over this server's limit of {MAX_WS_MESSAGE_CHARS}" in errors[4] and len(errors[4]) < 200
        while ws.receive().get("text", "").find('"chunk"') < 0:
            pass
        assert client.get(f"/api/streams/{job_id}").json()["state"] == "running"  # none of them cancelled it
    wait_idle(client, job_id)
    assert client.get(f"/api/streams/{job_id}").json()["state"] == "cancelled"  # the disconnect did


def test_a_model_that_goes_non_finite_mid_stream_fails_the_stream_with_the_engines_message(client, demo, monkeypatch):
    from histream_engine.runtime.denoise.chunk import ChunkDenoiser

    real = ChunkDenoiser.__call__
    calls = []

    def poisoned(*args, **kwargs):  # chunk 0 as it is, then the latents go NaN (one call a chunk, no CUDA graphs here)
        calls.append(1)
        x0 = real(*args, **kwargs)
        return x0 if len(calls) == 1 else x0 * float("nan")

    monkeypatch.setattr(ChunkDenoiser, "__call__", poisoned)
    events, frames = watch(client, client.post("/api/streams", json=SHORT).json()["id"])  # 2 chunks
    assert [e["index"] for e in events if e["type"] == "chunk"] == [0] and len(frames) == 9
    assert events[-1]["type"] == "failed" and "NonFiniteLatents: chunk 1: the latents hold NaN or Inf" in events[-1]["error"]
    monkeypatch.undo()
    events, _ = watch(client, client.post("/api/streams", json=SHORT).json()["id"])
    assert events[-1]["type"] == "done"  # the worker serves the next stream
