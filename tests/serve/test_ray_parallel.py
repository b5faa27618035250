"""histream serve --ray with --gpus-per-replica 2 on the session's CPU cluster: one replica that is a 2-rank gloo
sequence-parallel group of the tiny model (2 heads). /api/info shows its world size and devices; its stream is the
one-process engine's, JPEG for JPEG; a cancel stops both ranks at one boundary; a rank actor killed mid-stream ends
that attempt naming the rank, and the stream resumes from its checkpoint on the rebuilt group, every frame once and
the seam that of one process re-caching there, while the stream waiting behind it runs too (as does the next one after
a rank lost between streams); a live stream switched over REST through the ingress lands on both ranks, and the group
serves the next stream whole. With HISTREAM_SLOW_TESTS=1
also a live prompt switch over a 2-rank group, driven from a Ray task through the group a replica uses
(rank_group.RankGroup), so that its latents can be compared with one process's."""

import json
import os
import sys
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
websockets_sync = pytest.importorskip("websockets.sync.client")

from ray_cluster import DESCRIPTION, SPEC, ray_cluster, take_over  # noqa: E402,F401 - the session's cluster

SHORT = {"frames": 21, "width": 64, "height": 64, "schedule": "histream", "seed": 3}  # 2 chunks
LONG = {"frames": 45, "width": 96, "height": 96, "schedule": "self_forcing"}  # 4 chunks
RESUMABLE = {"frames": 45, "width": 64, "height": 64, "schedule": "histream", "seed": 3}  # 4 chunks, a windowed schedule


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    """The application with one replica of 2 ranks (half a CPU each), deployed in place of the shared one; its
    --embeds-dir holds other.pt, a prompt to switch to."""
    import torch

    from histream_engine.serve.protocol import Limits
    from histream_engine.serve.ray.deploy import Scaling, deploy
    from histream_engine.serve.ray.registry import Watching

    take_over(replace=True)
    scaling = Scaling(1, cpus_per_replica=0.5, ranks=2, health_check_period_s=1.0, graceful_shutdown_timeout_s=2.0,
                      graceful_shutdown_wait_loop_s=0.2)
    embeds = tmp_path_factory.mktemp("embeds")
    torch.save(torch.randn(8, 32, generator=torch.Generator().manual_seed(7)), embeds / "other.pt")  # [L, text_dim]
    registry = deploy(SPEC, DESCRIPTION, Limits(max_frames=81, max_side=256, max_queue=2), scaling, str(embeds),
                      watching=Watching(grace_s=30.0))
    yield ray_cluster
    del registry  # the next test that deploys replaces this application (deleting it here would cost 3 s)


def watch(base, stream_id, on_chunk=None):
    """Every JSON event of a stream's WebSocket until its end, and its JPEG frames."""
    events, frames = [], []
    with websockets_sync.connect(base.replace("http", "ws") + f"/api/streams/{stream_id}/ws", open_timeout=30) as ws:
        while True:
            msg = ws.recv(timeout=120)
            if isinstance(msg, bytes):
                frames.append(msg)
                continue
            events.append(json.loads(msg))
            if events[-1]["type"] == "chunk" and on_chunk is not None:
                on_chunk(events[-1])
            if events[-1]["type"] in ("done", "cancelled", "failed"):
                return events, frames


def start(base, body):
    r = httpx.post(base + "/api/streams", json=body, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def replicas(base):
    return httpx.get(base + "/api/info", timeout=30).json()["replicas"]


def test_info_shows_the_replica_world_size_and_devices(server):
    t0 = time.time()
    while not (listed := replicas(server)):
        assert time.time() - t0 < 30, "the replica never reported itself"
        time.sleep(0.2)
    assert [(r["world_size"], r["devices"], r["device"]) for r in listed] == [(2, ["CPU", "CPU"], "CPU")]


def test_two_ranks_stream_the_one_process_engines_frames(server):
    import torch

    from histream_engine import host as hosting
    from histream_engine.serve.session import encode_jpeg

    events, frames = watch(server, start(server, SHORT))
    assert events[-1]["type"] == "done" and len(frames) == 21, events[-1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a replica with half a CPU runs (Ray sets OMP_NUM_THREADS=1)
    try:
        one = hosting.tiny_demo("cpu", "torch", 0)
        expected = [encode_jpeg(f) for _, chunk in one.results(hosting.HostRequest("", "", 21, 64, 64, "histream", SHORT["seed"])) for f in chunk]
    finally:
        torch.set_num_threads(threads)
    # the tiny model's 2 heads split over 2 ranks give the very latents of one process, so the same JPEG bytes
    differ = [i for i, (ours, theirs) in enumerate(zip(frames, expected)) if ours != theirs]
    assert len(frames) == len(expected) and not differ, f"frames {differ} differ"


def test_a_cancel_stops_every_rank_and_the_next_stream_runs(server):
    sid = start(server, LONG)
    events, _ = watch(server, sid, on_chunk=lambda e: e["index"] == 0 and httpx.delete(server + f"/api/streams/{sid}"))
    assert events[-1]["type"] == "cancelled" and 1 <= events[-1]["chunks"] < 4, events[-1]
    # had one rank gone on alone, the group's next collective would fail or wait: it runs whole instead
    events, frames = watch(server, start(server, SHORT))
    assert events[-1]["type"] == "done" and len(frames) == 21, events[-1]


def kill_rank_1(replica: str) -> str:
    """Kills the rank-1 actor of ``replica``'s current group; returns its name."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"histream-{replica}-rank1-")]
    name = max(names, key=lambda n: int(n.rsplit("-", 1)[1]))  # the current group's rank 1
    ray.kill(ray.get_actor(name, namespace="histream"), no_restart=True)
    return name


def recached_reference(request: dict, recache_at: int) -> dict[int, list[bytes]]:
    """The uninterrupted stream on one process, its own prompt re-cached at boundary ``recache_at``: each chunk's JPEG
    frames (one thread, as a replica with half a CPU runs)."""
    import torch

    from histream_engine import host as hosting
    from histream_engine.serve.session import encode_jpeg

    one = hosting.tiny_demo("cpu", "torch", 0)
    stream = one.results(hosting.HostRequest("", "", request["frames"], request["height"], request["width"],
                                             request["schedule"], request["seed"]))
    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for c, frames in stream:
            out[c.index] = [encode_jpeg(f) for f in frames]
            if c.index + 1 == recache_at:
                stream.chunks.set_prompt(one.default_prompt, recache=True)
    finally:
        torch.set_num_threads(threads)
    return out


def test_a_lost_ranks_stream_resumes_on_the_rebuilt_group_with_every_frame_once(server):
    from test_ray_failover import watch as watch_chunks  # frames by chunk index, each chunk once

    replica = replicas(server)[0]["replica"]
    victim = start(server, RESUMABLE)
    waiting = start(server, SHORT)  # one stream a replica: this one waits in Ray's queue behind the victim
    killed = []
    events, frames = watch_chunks(server, victim, on_chunk=lambda e: e["index"] == 0 and killed.append(kill_rank_1(replica)))
    assert killed and events[-1]["type"] == "done" and events[-1]["chunks"] == 4, events[-1]
    resumed = [e for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["attempt"] == 1, resumed
    assert resumed[0]["why"].startswith("RankLost: rank 1 of this replica's 2 ranks was lost mid-stream"), resumed[0]
    seam = resumed[0]["index"]  # the boundary of the newest checkpoint when the rank died: after chunk 0 or a later one
    assert 1 <= seam < 4 and [e["index"] for e in events if e["type"] == "chunk"] == [0, 1, 2, 3]
    assert sum(len(f) for f in frames.values()) == 45
    # before the seam the group's frames, after it the rebuilt group's: both those of one process re-caching there
    reference = recached_reference(RESUMABLE, seam)
    assert [i for i in range(4) if frames[i] != reference[i]] == []
    # accepted before the loss, it ran too on the replica's new group (Ray's queue may give it the group before the
    # resume: it ended before this watch then, and its frames are in its mp4, not replayed)
    events, _ = watch(server, waiting)
    assert events[-1]["type"] == "done" and events[-1]["chunks"] == 2, events[-1]
    assert [(r["replica"], r["world_size"]) for r in replicas(server)] == [(replica, 2)]
    # a rank lost between streams fails none: the replica finds it gone and rebuilds before the next one
    killed.append(kill_rank_1(replica))
    events, frames = watch(server, start(server, SHORT))
    assert killed[1] != killed[0] and events[-1]["type"] == "done" and len(frames) == 21, events[-1]


def test_a_live_stream_is_switched_through_the_ingress_on_both_ranks(server):
    sid = start(server, {"live": True, "width": 32, "height": 32, "schedule": "histream_plus"})
    answers = []

    def steer(event):
        if event["index"] == 0:  # answered once both ranks have it queued, at the replica's next boundary
            answers.append(httpx.post(server + f"/api/streams/{sid}/prompt", json={"prompt_embeds": "other.pt"}, timeout=120))
        if any(e.get("prompt_switch") for e in seen) or event["index"] >= 6:
            httpx.delete(server + f"/api/streams/{sid}", timeout=30)

    seen = []
    events, _ = watch(server, sid, on_chunk=lambda e: (seen.append(e), steer(e)))
    assert answers[0].status_code == 200, answers[0].text
    marked = [e["index"] for e in events if e["type"] == "chunk" and e["prompt_switch"]]
    assert len(marked) == 1 and marked[0] >= 1 and events[-1]["type"] == "cancelled", events[-1]
    events, frames = watch(server, start(server, SHORT))  # the group agreed throughout: the next stream runs whole
    assert events[-1]["type"] == "done" and len(frames) == 21, events[-1]


def live_switch_on_two_ranks(spec: dict, switch_to: str) -> dict:
    """In a Ray task in bundle 0 of a 2-bundle placement group, as rank 0 of a replica: a live stream with a prompt
    switch (re-cache) queued after chunk 1, closed after chunk 3."""
    from histream_engine.host import HostRequest
    from histream_engine.serve.ray.rank_group import RankGroup

    group = RankGroup(spec, 2, {"num_cpus": 0.25}, 60.0, "histream-test-live")
    try:
        stream = group.stream(HostRequest("", "", None, 64, 96, "histream", 5, live=True))
        chunks = []
        for chunk, _frames in stream:
            chunks.append(chunk)
            if chunk.index == 1:
                stream.set_prompt("", switch_to, recache=True)
            if chunk.index == 3:
                break
        stream.close()
        return {"latents": [c.latents for c in chunks], "switched": [c.index for c in chunks if c.prompt_switch],
                "broken": group.broken}
    finally:
        group.shutdown()


@pytest.mark.skipif(os.environ.get("HISTREAM_SLOW_TESTS") != "1", reason="HISTREAM_SLOW_TESTS=1 (about 10 s)")
def test_a_live_prompt_switch_lands_on_both_ranks(server, tmp_path):
    import torch
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from histream_engine import host as hosting

    switch_to = tmp_path / "switch.pt"
    torch.save(torch.randn(8, 32, generator=torch.Generator().manual_seed(7)), switch_to)  # [L, text_dim] of the tiny model
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task's code travels with it
    bundles = placement_group([{"CPU": 0.25}] * 2, strategy="STRICT_PACK")
    try:
        ray.get(bundles.ready(), timeout=60)
        task = ray.remote(live_switch_on_two_ranks).options(num_cpus=0.25, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=bundles, placement_group_bundle_index=0))
        got = ray.get(task.remote(SPEC, str(switch_to)), timeout=120)
    finally:
        remove_placement_group(bundles)

    # rank 1 does not decode, so it usually waits at boundary 2 already when the switch reaches it: then it lands at 3
    assert len(got["switched"]) == 1 and got["switched"][0] in (2, 3) and got["broken"] is None, got["switched"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one process, the switch queued so that it lands where the group's did
        stream = hosting.tiny_demo("cpu", "torch", 0).results(hosting.HostRequest("", "", None, 64, 96, "histream", 5, live=True))
        expected = []
        for chunk, _ in stream:
            expected.append(chunk)
            if chunk.index == got["switched"][0] - 1:
                stream.set_prompt("", str(switch_to), recache=True)
            if chunk.index == 3:
                break
        stream.close()
    finally:
        torch.set_num_threads(threads)
    assert [c.index for c in expected if c.prompt_switch] == got["switched"]
    for ours, theirs in zip(got["latents"], [c.latents for c in expected], strict=True):
        assert torch.equal(ours, theirs)
