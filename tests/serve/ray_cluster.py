"""The session's one local Ray cluster, a fixture the Ray Serve tests import (a second conftest.py would clash with tests/conftest.py)."""

import socket

import pytest


_started: list[str] = []


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for every Ray Serve test (2 CPUs, a 256 MB object store, no dashboard)."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from histream_engine.serve.stream_registry import NAMESPACE

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
    serve.shutdown()
    ray.shutdown()
