"""The session's one local Ray cluster, and one histream deployment on it shared by the Ray Serve tests: fixtures
they import (a second conftest.py would clash with tests/conftest.py)."""

import socket

import pytest

_started: list[str] = []
_server: dict = {}

SPEC = {"model_dir": None, "checkpoint": "", "dtype": "float32", "device": "cpu", "attention": "torch", "text_encoder": False}
DESCRIPTION = "the embedded tiny demo model"


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for every Ray Serve test (2 CPUs, a 256 MB object store, no dashboard)."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from histream_engine.serve.ray.registry import NAMESPACE

    if _started:  # imported by several test modules: each gets its own copy of the fixture, all share one cluster
        yield _started[0]
        return
    ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, namespace=NAMESPACE,
             log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    _started.append(f"http://127.0.0.1:{port}")
    yield _started[0]
    shutdown_cluster()


def shutdown_cluster() -> None:
    """Stop the session's cluster, if it runs: after the last test that uses it (tests/conftest.py), so that its
    processes (the controller, the proxy, replicas answering health checks) stop taking CPU from the tests after it."""
    if not _started:
        return
    import ray
    from ray import serve

    import os
    import tempfile

    from histream_engine.serve.ray import scratch

    _server.clear()
    _started.clear()
    serve.shutdown()
    ray.shutdown()
    scratch.sweep(tempfile.gettempdir(), owner=os.getpid())  # every deployment's folder this session made


def server_config():
    """Two replicas of the tiny model (half a CPU each), health checks every second (so /api/info drops a dead replica
    within 4 s), and a short reconnect grace and watcher lease, so the tests of both wait seconds, not tens."""
    from histream_engine.serve.protocol import Limits
    from histream_engine.serve.ray.deploy import Scaling
    from histream_engine.serve.ray.registry import Watching

    return (Limits(max_frames=81, max_side=256, max_queue=2),
            Scaling(2, cpus_per_replica=0.5, health_check_period_s=1.0, graceful_shutdown_timeout_s=2.0,
                    graceful_shutdown_wait_loop_s=0.2),
            Watching(grace_s=2.0, lease_s=1.0))


@pytest.fixture(scope="module")
def ray_server(ray_cluster, tmp_path_factory):
    """The base URL of `histream serve --ray` on the session's cluster, deployed once and shared until a test takes the
    application over (``take_over``). Its --embeds-dir holds good.pt, calm.pt and storm.pt (prompts to steer a live stream
    between), huge.pt (finite values so large that the model overflows: an engine error only a replica meets), batch.pt
    (two prompts: the engine's prompt check refuses it) and link_out.pt (a link to a file outside: never served). Its /v1
    videos are kept in a folder of their own (``shared_data_dir``)."""
    if not _server:
        import torch

        from histream_engine.model.dit import WanDiT
        from histream_engine.serve.ray.deploy import deploy

        embeds = tmp_path_factory.mktemp("ray-embeds")
        dim = WanDiT("tiny").config.text_dim
        torch.save(torch.randn(8, dim), embeds / "good.pt")
        for name, seed in (("calm.pt", 1), ("storm.pt", 2)):
            torch.save(torch.randn(8, dim, generator=torch.Generator().manual_seed(seed)), embeds / name)
        torch.save(torch.full((8, dim), 3e38), embeds / "huge.pt")
        torch.save(torch.randn(2, 8, dim), embeds / "batch.pt")
        outside = tmp_path_factory.mktemp("outside") / "secret.pt"
        torch.save(torch.randn(8, dim), outside)
        (embeds / "link_out.pt").symlink_to(outside)
        limits, scaling, watching = server_config()
        _server["data_dir"] = tmp_path_factory.mktemp("ray-videos")
        _server["registry"] = deploy(SPEC, DESCRIPTION, limits, scaling, str(embeds), watching=watching,
                                     videos=video_options(_server["data_dir"]))
    return ray_cluster


def video_options(data_dir):
    """/v1 as the tests use it: the demo model's stand-in for text prompts, uploads up to 200 kB."""
    from histream_engine.serve.openai.options import VideoOptions

    return VideoOptions(data_dir, max_upload_bytes=200_000, stand_in_text=True)


def shared_data_dir():
    return _server["data_dir"]


def shared_registry():
    return _server["registry"]


def take_over(replace: bool = False) -> None:
    """For a test that deploys its own application: the shared one leaves (and is deployed again if asked for later).
    ``replace``: the caller's deploy replaces whatever application runs, in place, which takes about 3 s less than
    deleting it first."""
    from ray import serve

    from histream_engine.serve.ray.deploy import APP_NAME

    if not replace and APP_NAME in serve.status().applications:
        serve.delete(APP_NAME)
    _server.clear()
