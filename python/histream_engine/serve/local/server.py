"""Running plain ``histream serve``: the listening socket is bound here, before uvicorn starts, so a port that cannot
be had is one line at startup and ``--port 0`` prints the port the system gave. SIGTERM and Ctrl-C tell the transport
first (``stopping``: with a --data-dir the queue drains, and the WebSockets uvicorn then closes cancel nothing), then
uvicorn shuts down and the app's shutdown closes the transport."""

from __future__ import annotations

import socket

from fastapi import FastAPI


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: any free port); ValueError with the system's reason when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # from now on a client's connect waits in the backlog, not refused, until uvicorn accepts
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def url(sock: socket.socket, host: str) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{sock.getsockname()[1]}/"


def serve_forever(app: FastAPI, host: str, port: int, description: str) -> int:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            stopping = getattr(app.state.transport, "stopping", None)
            if stopping is not None and not self.should_exit:
                stopping()
            super().handle_exit(sig, frame)

    sock = listen(host, port)
    print(f"histream serve: {description}\nopen {url(sock, host)} (Ctrl-C stops)", flush=True)
    try:
        Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C (uvicorn re-raises it once it has shut down)
        pass
    return 0
