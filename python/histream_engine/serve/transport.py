"""What a transport provides to the one HTTP app (``app.build_app``) and the one WebSocket pump (``pump``).

A transport keeps streams and drives them: plain ``histream serve`` with a job queue and one engine in this process
(``local/``), ``--ray`` with a registry actor and engine replicas (``ray/``). Every method either answers or raises
``protocol.Refused`` with the HTTP status and the reason; the routes and the pump turn that into a response or an
``error`` event. Nothing here knows HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .protocol import PromptSwitchRequest, StreamRequest
from .session import Event


class Watch(Protocol):
    """One watcher of one stream (a WebSocket): its events in order, history first."""

    async def next(self) -> Event | None:
        """The next event (the final one last); None when none will come (the watcher cannot follow the stream)."""

    async def leave(self) -> None:
        """The watcher has gone (a transport may cancel a stream nobody watches)."""


class Transport(Protocol):
    async def info(self) -> dict:
        """``/api/info`` (``protocol.info``)."""

    async def start(self, req: StreamRequest) -> dict:
        """Accept a stream (its status), or refuse it: 400 for the request, 429 for a full queue."""

    async def status(self, stream_id: str) -> dict:
        """404 for a stream this server does not know."""

    async def cancel(self, stream_id: str) -> dict:
        """A queued stream ends now, a running one after its current chunk; its status."""

    async def switch(self, stream_id: str, change: PromptSwitchRequest) -> dict:
        """A prompt switch for the next chunk boundary, checked as a stream's first prompt is (400); 409 once the
        stream ended."""

    async def video(self, stream_id: str) -> Path | bytes:
        """The mp4 of what was generated; 409 before it is ready."""

    async def watch(self, stream_id: str) -> Watch:
        """A new watcher; 404 for an unknown stream, 429 when the stream has as many as it takes."""

    def close(self) -> None:
        """The server stops."""
