"""Streams that survive a replica over Ray (serve/ray/registry.py), on the session's local CPU cluster with the tiny
model: a replica killed mid-stream, by ``ray.kill`` or by ``os._exit`` inside its process, and the stream goes on from its
last checkpoint on another replica: the WebSocket sees ``resumed`` with the chunk index, every chunk and frame comes
once, the frames after the seam are those of the uninterrupted stream with a same-prompt re-cache at that boundary
(JPEG bytes equal), and the mp4 holds every frame once. A stream whose schedule keeps no state fails with the reason.
Every replica's scratch folder lives under the deployment's folder, which the server's stop (or the next start)
removes."""

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
websockets_sync = pytest.importorskip("websockets.sync.client")
import imageio_ffmpeg  # noqa: E402
import torch  # noqa: E402

from histream_engine import host  # noqa: E402
from histream_engine.model.dit import WanDiT  # noqa: E402
from histream_engine.serve.ray import scratch  # noqa: E402
from histream_engine.serve.session import encode_jpeg  # noqa: E402

from ray_cluster import ray_cluster, ray_server, shared_registry  # noqa: E402,F401 - the session's cluster
from test_ray import start, status  # noqa: E402

RESUMABLE = {"frames": 45, "width": 32, "height": 32, "schedule": "histream", "prompt_embeds": "calm.pt"}  # 4 chunks


@pytest.fixture(scope="module")
def server(ray_server):
    return ray_server


def watch(base, stream_id, on_chunk=None, timed=False):
    """(events, the JPEG frames of each chunk index) of a stream's WebSocket until its end; ``timed``: each event as
    (its arrival time, the event)."""
    events, frames, current = [], {}, None
    with websockets_sync.connect(base.replace("http", "ws") + f"/api/streams/{stream_id}/ws", open_timeout=60) as ws:
        while True:
            msg = ws.recv(timeout=240)
            if isinstance(msg, bytes):
                frames[current].append(msg)
                continue
            event = json.loads(msg)
            events.append((time.monotonic(), event) if timed else event)
            if event["type"] == "chunk":
                current = event["index"]
                assert current not in frames, f"chunk {current} sent twice"
                frames[current] = []
                if on_chunk is not None:
                    on_chunk(event)
            if event["type"] in ("done", "cancelled", "failed"):
                return events, frames


def replica_actor(replica: str) -> str:
    return next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(replica))


def kill_with_ray(replica: str) -> None:
    ray.kill(ray.get_actor(replica_actor(replica), namespace="serve"), no_restart=True)


def kill_process(replica: str) -> None:
    """A crash inside the replica's process: ``os._exit``, run there while it makes a chunk, with no cleanup at all."""
    actor = ray.get_actor(replica_actor(replica), namespace="serve")
    actor.__ray_call__.remote(lambda self: os._exit(1))


def reference(recache_at: int) -> dict[int, list[bytes]]:
    """The uninterrupted stream on this process's copy of the replicas' model, the same prompt re-cached at boundary
    ``recache_at``: each chunk's JPEG frames."""
    demo = host.tiny_demo("cpu", "torch", 0, encoder=True)  # as a replica serves it (/v1 encodes given frames)
    path = Path(tempfile.mkdtemp()) / "calm.pt"  # the fixture's calm.pt, made the same way
    torch.save(torch.randn(8, WanDiT("tiny").config.text_dim, generator=torch.Generator().manual_seed(1)), path)
    stream = demo.results(host.HostRequest("", str(path), 45, 32, 32, "histream", 0))
    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # as a replica of under one CPU runs (Ray sets OMP_NUM_THREADS=1): the same sums, in order
    try:
        for c, frames in stream:
            out[c.index] = [encode_jpeg(f) for f in frames]
            if c.index + 1 == recache_at:
                stream.set_prompt("", str(path), True)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("kill,at", [(kill_with_ray, 0), (kill_process, 1)], ids=["ray.kill", "os._exit"])
def test_a_killed_replicas_stream_resumes_from_its_checkpoint_with_every_frame_once(server, kill, at):
    sid, killed = start(server, RESUMABLE), []

    def on_chunk(event):
        if event["index"] == at and not killed:
            killed.append(event["replica"])
            kill(event["replica"])

    events, frames = watch(server, sid, on_chunk)
    assert events[-1]["type"] == "done" and events[-1]["chunks"] == 4, events[-1]
    resumed = [e for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["index"] == at + 1 and resumed[0]["attempt"] == 1, resumed
    assert "replica lost" in resumed[0]["why"]
    assert [e["index"] for e in events if e["type"] == "chunk"] == [0, 1, 2, 3]
    assert sum(len(f) for f in frames.values()) == 45
    ref = reference(at + 1)
    assert all(frames[i] == ref[i] for i in range(4))  # before and after the seam
    s = status(server, sid)
    assert s["state"] == "done" and s["resumes"] == 1 and s["chunks"] == 4
    video = httpx.get(server + s["video"], timeout=30)
    path = Path(tempfile.mkdtemp()) / "v.mp4"
    path.write_bytes(video.content)
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 45  # the joined segments: every frame once
    # the killed replica's scratch folder is under the deployment's, which the server removes when it stops
    folder = Path(ray.get(shared_registry().scratch_folder.remote()))
    assert folder.name.startswith(scratch.PREFIX) and any(folder.glob("histream-replica-*"))


def test_a_stream_that_keeps_no_state_fails_with_the_reason(server):
    sid, killed = start(server, {**RESUMABLE, "schedule": "self_forcing"}), []

    def on_chunk(event):
        if not killed:
            killed.append(event["replica"])
            kill_with_ray(event["replica"])

    events, _ = watch(server, sid, on_chunk)
    assert events[-1]["type"] == "failed", events[-1]
    assert "replica lost" in events[-1]["error"] and "no state yet" in events[-1]["error"]
    assert "full history" in events[-1]["error"]


def test_deployment_folders_are_removed_by_their_stop_or_the_next_start(tmp_path):
    mine = scratch.server_folder("mine", tmp_path)
    (mine / "histream-replica-x").mkdir()
    orphan = tmp_path / f"{scratch.PREFIX}dead"
    (orphan / "histream-replica-y").mkdir(parents=True)
    (orphan / scratch.OWNER).write_text("999999999")  # a deployer that is gone (SIGKILL)
    foreign = tmp_path / f"{scratch.PREFIX}foreign"
    foreign.mkdir()  # no owner file: not ours, left alone
    scratch.server_folder("next", tmp_path)
    assert not orphan.exists() and mine.is_dir() and foreign.is_dir()
    scratch.remove(mine)
    assert not mine.exists()
