"""An ASGI app on a real server for the tests that need sockets (a browser, real HTTP clients): uvicorn in a thread
on a free loopback port."""

import contextlib
import socket
import threading
import time

import pytest


@contextlib.contextmanager
def serving(app, log_level: str = "error"):
    """``app`` served until the block ends: its base URL, without a trailing slash."""
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
