"""Chaos over Ray (serve/ray/registry.py): N streams over the two replicas of the session's local cluster (the tiny
model), replicas killed under a seeded schedule, at chunk boundaries (the moment a chunk's event arrives) and mid-chunk
(a random delay after it), by ``ray.kill`` and by ``os._exit`` inside the replica. Every stream ends ``done`` with
every chunk and frame once, or ``failed`` with a reason; at every seam the frames are those of the uninterrupted stream
re-cached under the same prompt at that boundary (JPEG bytes equal, against this process's model on one thread, as a
replica of under one CPU runs). The default form (3 streams, 3 kills) keeps the suite short; ``HISTREAM_SLOW_TESTS=1``
runs 4 streams of 7 chunks (the test deployment takes 4 at once) and 6 kills. ``HISTREAM_CHAOS_OUT=path.json`` writes the figures (streams, kills, resumes,
the seconds from each kill to its stream's resumed event and to the next chunk)."""

import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
pytest.importorskip("websockets.sync.client")
import torch  # noqa: E402

from histream_engine import host  # noqa: E402
from histream_engine.model.dit import WanDiT  # noqa: E402
from histream_engine.serve.session import encode_jpeg  # noqa: E402

from ray_cluster import ray_cluster, ray_server  # noqa: E402,F401 - the session's cluster
from test_ray_failover import watch  # noqa: E402 - its timed form

SLOW = os.environ.get("HISTREAM_SLOW_TESTS") == "1"
STREAMS, KILLS, FRAMES = (4, 6, 81) if SLOW else (3, 3, 45)  # 45 frames: 4 chunks; 81: 7 (4 streams: the queue bound)
CHUNKS = (FRAMES - 9) // 12 + 1
REQUEST = {"frames": FRAMES, "width": 32, "height": 32, "schedule": "histream", "prompt_embeds": "calm.pt"}
SEED = 20261208


@pytest.fixture(scope="module")
def server(ray_server):
    return ray_server


def replica_actor(replica: str):
    name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(replica))
    return ray.get_actor(name, namespace="serve")


def kill(replica: str, how: str) -> None:
    actor = replica_actor(replica)
    if how == "ray.kill":
        ray.kill(actor, no_restart=True)
    else:
        actor.__ray_call__.remote(lambda self: os._exit(1))


class Chaos:
    """The seeded schedule: kill number i hits stream s at chunk c's event, after ``delay`` s (0: at the boundary)."""

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.plan = {}
        while len(self.plan) < KILLS:
            key = (rng.randrange(STREAMS), rng.randrange(CHUNKS - 1))  # never after the last chunk: nothing to resume
            self.plan[key] = (rng.choice([0.0, rng.uniform(0.05, 0.6)]), rng.choice(["ray.kill", "os._exit"]))
        self.done: list[dict] = []  # the kills carried out
        self.lock = threading.Lock()

    def on_chunk(self, stream: int, event: dict) -> None:
        step = self.plan.pop((stream, event["index"]), None)
        if step is None:
            return
        delay, how = step
        time.sleep(delay)
        try:
            kill(event["replica"], how)
        except Exception as exc:  # noqa: BLE001 - the replica was gone already (another kill): say so in the figures
            how = f"{how} (missed: {type(exc).__name__})"
        with self.lock:
            self.done.append({"stream": stream, "after_chunk": event["index"], "delay_s": delay, "how": how,
                              "at": time.monotonic()})


_references: dict = {}


def reference(seams: frozenset) -> dict:
    """The uninterrupted stream re-cached under the same prompt at each of ``seams``: each chunk's JPEG frames."""
    if seams not in _references:
        demo = _references.setdefault("demo", host.tiny_demo("cpu", "torch", 0, encoder=True))  # as a replica serves it
        path = Path(tempfile.mkdtemp()) / "calm.pt"  # the fixture's calm.pt, made the same way
        torch.save(torch.randn(8, WanDiT("tiny").config.text_dim, generator=torch.Generator().manual_seed(1)), path)
        stream = demo.results(host.HostRequest("", str(path), FRAMES, 32, 32, "histream", 0))
        out, threads = {}, torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for c, f in stream:
                out[c.index] = [encode_jpeg(x) for x in f]
                if c.index + 1 in seams:
                    stream.set_prompt("", str(path), True)
        finally:
            torch.set_num_threads(threads)
        _references[seams] = out
    return _references[seams]


def test_streams_survive_replicas_killed_at_random(server):
    chaos, results = Chaos(SEED), [None] * STREAMS
    t0 = time.monotonic()

    def one(i):
        r = httpx.post(server + "/api/streams", json=REQUEST, timeout=60)
        assert r.status_code == 201, r.text
        results[i] = watch(server, r.json()["id"], lambda e: chaos.on_chunk(i, e), timed=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.monotonic() - t0
    assert all(r is not None for r in results), "a stream's watcher did not finish"
    figures = {"streams": STREAMS, "chunks_per_stream": CHUNKS, "kills": chaos.done, "resumes": [], "wall_s": wall,
               "done": 0, "failed": []}
    for i, (events, frames) in enumerate(results):
        final = events[-1][1]
        resumed = [(at, e) for at, e in events if e["type"] == "resumed"]
        for at, e in resumed:
            kill_at = max((k["at"] for k in chaos.done if k["stream"] == i and k["at"] <= at), default=None)
            after = next((t for t, x in events if t > at and x["type"] == "chunk"), None)
            figures["resumes"].append({"stream": i, "index": e["index"], "attempt": e["attempt"],
                                       "kill_to_resumed_s": None if kill_at is None else at - kill_at,
                                       "kill_to_next_chunk_s": None if kill_at is None or after is None else after - kill_at})
        if final["type"] == "failed":
            assert final["error"], final  # failed, with the reason
            figures["failed"].append(final["error"])
            continue
        assert final["type"] == "done" and final["chunks"] == CHUNKS, final
        assert [e["index"] for _, e in events if e["type"] == "chunk"] == list(range(CHUNKS))  # once each, in order
        assert sum(len(f) for f in frames.values()) == FRAMES
        seams = frozenset(e["index"] for _, e in resumed if e["index"] > 0)
        ref = reference(seams)
        assert all(frames[c] == ref[c] for c in range(CHUNKS)), f"stream {i}: seams {sorted(seams)}"
        figures["done"] += 1
    assert figures["resumes"], "no stream was resumed: the schedule killed nothing"
    out = os.environ.get("HISTREAM_CHAOS_OUT")
    if out:
        Path(out).write_text(json.dumps(figures, indent=1))
    # the cluster heals for the tests after this one: two replicas answering again
    t1 = time.monotonic()
    while len([r for r in httpx.get(server + "/api/info", timeout=30).json()["replicas"] if r["state"] == "idle"]) < 2:
        assert time.monotonic() - t1 < 90, "the killed replicas were not replaced within 90 s"
        time.sleep(0.5)
