"""histream serve --ray on a local CPU Ray cluster with the tiny model: concurrent streams over two replicas, each
complete and in order; /api/info shows what the replicas run; a replica killed mid-stream fails only its stream, drops
out of /api/info and is replaced, and the next stream succeeds first time; a replica that raises fails only that
stream; live streams switched over the WebSocket and REST on the replica that runs them (the engine's prompt check
there, plain serve's answers), ended by their duration, and switches racing a cancel; the reconnect grace (a client
that comes back gets the history and the rest, one that does not gets the stream cancelled with a reason, a dead
ingress's watchers stop counting); the bounds (watchers, queue, body size, WebSocket messages); bad requests as plain
serve answers them (the option refusals: test_startup.py)."""

import json
import threading
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
websockets_sync = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402

from histream_engine.serve.guards import MAX_BODY_BYTES, MAX_WS_MESSAGE_CHARS  # noqa: E402

from ray_cluster import ray_cluster, ray_server, server_config, shared_registry  # noqa: E402,F401 - the session's cluster

SHORT = {"frames": 21, "width": 64, "height": 64, "schedule": "histream"}  # 2 chunks: 9 + 12 frames
LONG = {"frames": 45, "width": 96, "height": 96, "schedule": "self_forcing"}  # 4 chunks
LONGER = {"frames": 81, "width": 96, "height": 96, "schedule": "self_forcing"}  # 7 chunks
LONGEST = {"frames": 81, "width": 128, "height": 128, "schedule": "self_forcing"}  # 7 larger ones: outlasts lease and grace
LIVE = {"live": True, "width": 32, "height": 32, "schedule": "histream_plus", "prompt_embeds": "calm.pt"}  # the smallest
LIMITS, SCALING, WATCHING = server_config()


@pytest.fixture(scope="module")
def server(ray_server):
    return ray_server


def ws_url(base, stream_id):
    return base.replace("http", "ws") + f"/api/streams/{stream_id}/ws"


def watch(base, stream_id, on_chunk=None, ws=None):
    """Every message of a stream's WebSocket until its end: (events, number of JPEG frames)."""
    events, frames = [], 0
    with ws or websockets_sync.connect(ws_url(base, stream_id), open_timeout=30) as ws:
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


def status(base, stream_id):
    return httpx.get(base + f"/api/streams/{stream_id}", timeout=30).json()


def info(base):
    return httpx.get(base + "/api/info", timeout=30).json()


def wait_for(condition, timeout, what):
    t0 = time.time()
    while not (value := condition()):
        assert time.time() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.2)
    return value


def wait_end(base, stream_id, timeout=120):
    return wait_for(lambda: (s := status(base, stream_id))["state"] in ("done", "cancelled", "failed") and s, timeout,
                    f"stream {stream_id} ended")


def concurrently(*calls):
    results = [None] * len(calls)

    def one(i):
        results[i] = calls[i]()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return results


def test_four_concurrent_streams_complete_in_order_on_both_replicas(server):
    results = concurrently(*[lambda: (sid := start(server, SHORT), watch(server, sid)) for _ in range(4)])
    replicas = set()
    for sid, (events, frames) in results:
        chunks = [e for e in events if e["type"] == "chunk"]
        assert [c["index"] for c in chunks] == [0, 1] and frames == 21 and events[-1]["type"] == "done", events[-1]
        s = status(server, sid)
        assert s["state"] == "done" and s["chunks"] == 2
        replicas.add(s["replica"])
        video = httpx.get(server + s["video"], timeout=30)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert len(replicas) == 2  # max_ongoing_requests=1: four streams cannot all run on one replica
    assert {r["replica"] for r in info(server)["replicas"]} >= replicas


def test_info_shows_what_the_replicas_run(server):
    got = info(server)
    assert (got["device"], got["dtype"], got["decoder"], got["text_encoder"]) == ("CPU", "float32", "wan", False)
    assert got["reconnect_grace_seconds"] == WATCHING.grace_s and got["live"] is True
    assert got["embeddings"] == ["batch.pt", "calm.pt", "good.pt", "huge.pt", "storm.pt"]  # not link_out.pt
    assert len(got["replicas"]) == 2
    assert all((r["device"], r["dtype"], r["decoder"], r["state"]) == ("CPU", "float32", "wan", "idle") for r in got["replicas"])


def test_a_killed_replica_fails_only_its_stream_drops_out_and_the_next_stream_succeeds(server):
    victim, other = start(server, LONG), start(server, LONG)
    killed = []

    def kill(event):
        if event["index"] == 0:
            replica = status(server, victim)["replica"]
            name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(replica))
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
            killed.append(replica)

    (events, _), (other_events, _) = concurrently(lambda: watch(server, victim, on_chunk=kill), lambda: watch(server, other))
    assert events[-1]["type"] == "failed" and "replica lost" in events[-1]["error"], events[-1]
    assert other_events[-1]["type"] == "done", other_events[-1]
    assert status(server, victim)["state"] == "failed"

    def replaced():  # the dead one unlisted (no health check for 4 s), two live ones: Serve's replacement is up
        replicas = info(server)["replicas"]
        ids = {r["replica"] for r in replicas}
        return killed[0] not in ids and len(ids) == 2 and all(r["state"] == "idle" for r in replicas) and ids

    live = wait_for(replaced, 60, "the killed replica replaced in /api/info")
    events, frames = watch(server, start(server, SHORT))  # strict: the first stream after the replacement succeeds
    assert events[-1]["type"] == "done" and frames == 21, events[-1]
    assert {e["replica"] for e in events if e["type"] == "chunk"} <= live


def test_a_replica_that_raises_fails_only_that_stream_and_serves_the_next(server):
    # past the ingress: a prompt needs the text encoder, which only the replica knows it lacks
    events, _ = watch(server, start(server, {**SHORT, "prompt": "a cat"}))
    assert events[-1]["type"] == "failed" and "this engine has no text encoder" in events[-1]["error"], events[-1]
    # an engine error mid-run: embeddings this large overflow the model, and the chunk's latents go NaN
    huge = start(server, {**SHORT, "prompt_embeds": "huge.pt"})
    events, frames = watch(server, huge)
    assert events[-1]["type"] == "failed" and frames == 0, events[-1]
    assert "NonFiniteLatents: chunk 0: the latents hold NaN or Inf" in events[-1]["error"]
    failed_on = status(server, huge)["replica"]
    assert failed_on in {r["replica"] for r in info(server)["replicas"]}  # the same replica, not restarted
    # two overlapping streams take both replicas (one running stream a replica): the one that raised serves again
    results = concurrently(lambda: watch(server, start(server, LONG)), lambda: watch(server, start(server, LONG)))
    assert [events[-1]["type"] for events, _ in results] == ["done", "done"]
    assert failed_on in {e["replica"] for events, _ in results for e in events if e["type"] == "chunk"}


def test_a_client_that_reconnects_within_the_grace_gets_the_history_and_the_rest(server):
    sid = start(server, LONGER)
    with websockets_sync.connect(ws_url(server, sid), open_timeout=30) as ws:
        while not (isinstance(msg := ws.recv(timeout=120), str) and json.loads(msg)["type"] == "chunk"):
            pass
    # the connection is gone (as when an ingress restarts) and the stream its only watcher: it goes on in the registry,
    # and a client back within the grace gets the history (frames too, while the stream runs), then the rest
    events, frames = watch(server, sid)
    chunks = [e["index"] for e in events if e["type"] == "chunk"]
    assert chunks == list(range(7)) and frames == 81 and events[-1]["type"] == "done", events[-1]
    assert events[-1]["reason"] is None


def test_a_client_that_never_returns_gets_the_stream_cancelled_after_the_grace(server):
    sid = start(server, LONGEST)
    with websockets_sync.connect(ws_url(server, sid), open_timeout=30) as ws:
        while not (isinstance(msg := ws.recv(timeout=120), str) and json.loads(msg)["type"] == "chunk"):
            pass
    left = time.time()
    end = wait_end(server, sid)
    assert end["state"] == "cancelled" and f"nobody watched it for {WATCHING.grace_s:g} s" in end["reason"], end
    assert time.time() - left >= WATCHING.grace_s and 1 <= end["chunks"] < 7
    events, _ = watch(server, sid)  # a late watcher gets the history, the reason in its last event
    assert events[-1]["type"] == "cancelled" and events[-1]["reason"] == end["reason"]


def test_watchers_are_bounded_and_a_dead_ingress_frees_its_places(server):
    registry = shared_registry()
    bounded, orphan = start(server, LONG), start(server, LONGEST)
    # watchers an ingress registered and then died with: they never poll, never unwatch
    t0 = time.time()
    for _ in range(WATCHING.max_watchers):
        assert ray.get(registry.watch.remote(bounded))[0] is not None
    assert ray.get(registry.watch.remote(orphan))[0] is not None
    with websockets_sync.connect(ws_url(server, bounded), open_timeout=30) as ws:
        refused = json.loads(ws.recv(timeout=30))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert refused == {"type": "failed", "error": f"stream {bounded} already has 8 watchers (the limit is 8)"}
    assert closed.value.rcvd.code == 4429

    while True:  # until the dead watchers' leases run out and free their places
        with websockets_sync.connect(ws_url(server, bounded), open_timeout=30) as ws:
            first = json.loads(ws.recv(timeout=30))
            if first["type"] != "failed":
                admitted = time.time() - t0
                events, _ = watch(server, bounded, ws=ws)  # a live watcher now: the stream runs to its end
                break
        assert time.time() - t0 < 30, first
        time.sleep(0.2)
    assert admitted >= WATCHING.lease_s and first["type"] in ("started", "chunk")  # not before their leases ran out
    assert events[-1]["type"] == "done" and events[-1]["reason"] is None, events[-1]
    end = wait_end(server, orphan)  # only a dead watcher: cancelled once its lease and the grace ran out
    assert end["state"] == "cancelled" and "nobody watched it" in end["reason"], end


def test_a_full_queue_answers_429_and_what_it_accepted_ends_cleanly(server):
    most = LIMITS.max_queue + SCALING.replicas  # the registry counts a stream as waiting until a replica starts it
    answers = [httpx.post(server + "/api/streams", json=LONG, timeout=60) for _ in range(most + 3)]
    accepted = [r.json()["id"] for r in answers if r.status_code == 201]
    refused = [r for r in answers if r.status_code == 429]
    assert refused and len(accepted) >= most, [r.status_code for r in answers]
    assert f"already waiting (the limit is {most})" in refused[0].json()["detail"]
    for sid in accepted:
        httpx.delete(server + f"/api/streams/{sid}", timeout=30)
    ends = [wait_end(server, sid) for sid in accepted]
    assert {e["state"] for e in ends} == {"cancelled"}, ends  # none failed: Ray's queue took all the registry admitted
    assert sum(e["chunks"] == 0 for e in ends) >= len(accepted) - SCALING.replicas  # the waiting ones ran no chunk
    # the cancelled streams leave Ray's queue as replicas reach and skip them; until then a POST may still get 429
    sid = wait_for(lambda: (r := httpx.post(server + "/api/streams", json=SHORT, timeout=60)).status_code != 429 and r, 30,
                   "a place in the queue").json()["id"]
    events, _ = watch(server, sid)
    assert events[-1]["type"] == "done"


def test_bad_requests_get_a_reason(server):
    over = httpx.post(server + "/api/streams", json={**SHORT, "frames": 81 + 4}, timeout=30)
    assert over.status_code == 400 and "limit of 81" in over.json()["detail"]
    engine = httpx.post(server + "/api/streams", json={**SHORT, "frames": 20}, timeout=30)
    assert engine.status_code == 400 and "frames" in engine.json()["detail"]
    extra = httpx.post(server + "/api/streams", json={**SHORT, "colour": "x" * 5000}, timeout=30)
    assert extra.status_code == 422 and "Extra inputs" in extra.text and len(extra.text) < 2000  # an excerpt, not the input
    big = httpx.post(server + "/api/streams", json={**SHORT, "prompt": "x" * (MAX_BODY_BYTES + 1)}, timeout=30)
    assert big.status_code == 413 and f"limit of {MAX_BODY_BYTES} bytes" in big.json()["detail"]
    duration = httpx.post(server + "/api/streams", json={**SHORT, "duration": 5}, timeout=30)
    assert duration.status_code == 400 and "duration applies to live streams" in duration.json()["detail"]
    assert httpx.get(server + "/api/streams/nope").status_code == 404
    events, _ = watch(server, "nope")
    assert events == [{"type": "failed", "error": "no stream 'nope'"}]


def test_websocket_messages_are_checked_before_parsing_and_answered(server):
    sid = start(server, LONG)
    with websockets_sync.connect(ws_url(server, sid), open_timeout=30) as ws:
        ws.send('{"type": "cancel", "pad": "' + "x" * MAX_WS_MESSAGE_CHARS + '"}')  # a cancel, but too big to read
        ws.send(json.dumps({"type": "prompt", "prompt": "a dog"}))  # checked by the replica, as plain serve checks it
        events, _ = watch(server, sid, ws=ws)
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert f"over this server's limit of {MAX_WS_MESSAGE_CHARS}" in errors[0] and "no text encoder" in errors[1], errors
    assert events[-1]["type"] == "done"  # the oversized cancel was never read


def switch(base, stream_id, body):
    return httpx.post(base + f"/api/streams/{stream_id}/prompt", json=body, timeout=120)


def test_a_live_stream_is_switched_over_the_websocket_and_rest_on_a_replica(server):
    job = httpx.post(server + "/api/streams", json=LIVE, timeout=60)
    assert job.status_code == 201, job.text
    sid, request = job.json()["id"], job.json()["request"]
    assert request["frames"] is None and request["duration"] == LIMITS.max_live_seconds
    answers = {}
    events = []
    with websockets_sync.connect(ws_url(server, sid), open_timeout=30) as ws:
        while True:
            msg = ws.recv(timeout=120)
            if isinstance(msg, bytes):
                continue
            events.append(json.loads(msg))
            index = events[-1].get("index") if events[-1]["type"] == "chunk" else None
            if index == 0:
                ws.send(json.dumps({"type": "prompt", "prompt_embeds": "storm.pt", "recache": True}))
                ws.send(json.dumps({"type": "prompt", "prompt_embeds": "missing.pt"}))  # the ingress's resolver refuses it
            elif index == 2:  # answered once the replica has taken it, at its next chunk boundary
                answers["rest"] = switch(server, sid, {"prompt_embeds": "calm.pt", "recache": False})
                answers["text"] = switch(server, sid, {"prompt": "a red fox"})  # the replica's engine refuses it
            elif index == 5:
                ws.send(json.dumps({"type": "cancel"}))
            if events[-1]["type"] in ("done", "cancelled", "failed"):
                break
    assert answers["rest"].status_code == 200, answers["rest"].text
    assert answers["text"].status_code == 400 and "no text encoder" in answers["text"].json()["detail"]
    chunks = [e for e in events if e["type"] == "chunk"]
    marked = [c for c in chunks if c["prompt_switch"]]
    assert [c["prompt_switch"]["recache"] for c in marked] == [True, False], [c["index"] for c in marked]
    assert 1 <= marked[0]["index"] < marked[1]["index"] and marked[1]["index"] >= 3  # each at a boundary after it was sent
    assert [e["prompt_embeds"] for e in events if e["type"] == "prompt"] == ["storm.pt", "calm.pt"]
    assert [e["error"] for e in events if e["type"] == "error"] == [
        "no embeddings file 'missing.pt' on this server; it has ['batch.pt', 'calm.pt', 'good.pt', 'huge.pt', 'storm.pt']"]
    end = events[-1]
    assert end["type"] == "cancelled" and end["chunks"] >= 6 and end["reason"] is None, end
    assert {c["replica"] for c in chunks} == {status(server, sid)["replica"]}
    assert httpx.get(server + end["video"], timeout=30).content[4:8] == b"ftyp"
    late = switch(server, sid, {"prompt_embeds": "calm.pt"})
    assert late.status_code == 409 and "nothing to switch" in late.json()["detail"]


def test_a_live_stream_ends_at_its_duration_and_switches_racing_a_cancel_get_409(server):
    sid = start(server, {**LIVE, "duration": 1})
    end = wait_end(server, sid, timeout=60)
    assert end["state"] == "done" and end["reason"] == "reached its duration of 1 s", end
    sid = start(server, LIVE)
    wait_for(lambda: status(server, sid)["chunks"] >= 1, 60, "a first chunk")
    answers = concurrently(*[lambda: switch(server, sid, {"prompt_embeds": "storm.pt"}) for _ in range(3)],
                           lambda: httpx.delete(server + f"/api/streams/{sid}", timeout=30))
    assert {r.status_code for r in answers[:3]} <= {200, 409}, [r.text for r in answers]
    assert wait_end(server, sid, timeout=60)["state"] == "cancelled"
    events, frames = watch(server, start(server, SHORT))  # and the replica serves the next stream
    assert events[-1]["type"] == "done" and frames == 21


def test_hostile_inputs_get_plain_serves_answers_over_ray(server):
    """The fixes of the adversarial pass hold on this transport too: strict models (F12), the one resolver (F4), the
    switch's prompt check on the replica (F3), the guarded decoder and listener (F1), the replay notice (F5)."""
    assert httpx.post(server + "/api/streams", json={**LIVE, "duration": True}, timeout=30).status_code == 422
    both = httpx.post(server + "/api/streams", json={**LIVE, "frames": 9}, timeout=30)
    assert both.status_code == 400 and "contradicts" in both.json()["detail"]
    link = httpx.post(server + "/api/streams", json={**SHORT, "prompt_embeds": "link_out.pt"}, timeout=30)
    assert link.status_code == 400 and "no embeddings file 'link_out.pt'" in link.json()["detail"]
    sid = start(server, LIVE)
    with websockets_sync.connect(ws_url(server, sid), open_timeout=30) as ws:
        ws.send("[" * 8000 + "]" * 8000)
        ws.send(json.dumps({"type": "prompt", "prompt_embeds": "batch.pt"}))
        rest = switch(server, sid, {"prompt_embeds": "batch.pt"})
        assert rest.status_code == 400, rest.text
        assert rest.json()["detail"].startswith("the prompt embeddings hold a batch of 2 prompts; this entry point streams 1")
        errors = []
        while len(errors) < 2:
            msg = ws.recv(timeout=120)
            if isinstance(msg, str) and json.loads(msg)["type"] == "error":
                errors.append(json.loads(msg)["error"])
        assert "nested 8000 levels deep" in errors[0] and errors[1] == rest.json()["detail"], errors
        ws.send(json.dumps({"type": "cancel"}))  # the listener still takes it
        events, _ = watch(server, sid, ws=ws)
    assert events[-1]["type"] == "cancelled", events[-1]
    late, _ = watch(server, sid)  # a watcher after the end is told the frames are gone
    assert late[0]["type"] == "replay" and late[0]["from_chunk"] == events[-1]["chunks"], late[0]

