"""A stream's events in order, for every watcher, late ones included (both transports keep one per stream).

Events are appended by whoever drives the stream and read by index, so a watcher (a WebSocket, or an ingress polling
the Ray registry) asks for what it has not seen yet. Once the stream has ended its JPEG frames leave the log: a late
watcher gets the events, and the mp4 has the frames.
"""

from __future__ import annotations

import threading

from .session import Event


class EventLog:
    def __init__(self):
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def append(self, event: Event) -> int:
        """Returns how many events the log holds now."""
        with self._lock:
            self._events.append(event)
            return len(self._events)

    def since(self, n: int) -> list[Event]:
        with self._lock:
            return self._events[n:]

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def forget_frames(self) -> None:
        with self._lock:
            self._events = [Event(e.data) for e in self._events]
