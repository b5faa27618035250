"""A stream's events in order, for every watcher, late ones included (both transports keep one per stream).

Events are appended by whoever drives the stream and read by index, so a watcher (a WebSocket, or an ingress polling
the Ray registry) asks for what it has not seen yet. Every event stays, but JPEG frames only for a bounded replay
window: the newest chunks whose frames add up to at most ``replay_frames`` (the newest chunk always), so a live stream
holds a few seconds of frames however long it runs. Once the stream has ended no frames stay (the mp4 has them). A
read that reaches back before the window starts with a ``replay`` event: chunk events before its ``from_chunk`` come
without their frames.
"""

from __future__ import annotations

import threading
from collections import deque

from . import protocol
from .session import Event


class EventLog:
    def __init__(self, replay_frames: int, replay_seconds: float):
        self.replay_frames, self.replay_seconds = replay_frames, replay_seconds
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._framed: deque[int] = deque()  # positions of the events that still hold frames, oldest first
        self.held_frames = 0
        self.dropped_frames = 0
        self._first_framed = 0  # no event before this position holds frames
        self._chunks = 0

    def append(self, event: Event) -> int:
        """Returns how many events the log holds now."""
        with self._lock:
            self._events.append(event)
            self._chunks += event.data["type"] == "chunk"
            if event.frames:
                self._framed.append(len(self._events) - 1)
                self.held_frames += len(event.frames)
                while self.held_frames > self.replay_frames and len(self._framed) > 1:
                    self._drop(self._framed.popleft())
            return len(self._events)

    def _drop(self, position: int) -> None:
        """A new Event without frames replaces the old one: a watcher that was handed the old one still sends its frames."""
        old = self._events[position]
        self._events[position] = Event(old.data)
        self.held_frames -= len(old.frames)
        self.dropped_frames += len(old.frames)
        self._first_framed = self._framed[0] if self._framed else len(self._events)

    def since(self, n: int) -> tuple[dict | None, list[Event]]:
        """(a ``replay`` event, or None when no event from the n-th on lost its frames; the events from the n-th on)."""
        with self._lock:
            events = self._events[n:]
            if n >= self._first_framed or not self.dropped_frames:
                return None, events
            if self._framed:
                from_chunk = self._events[self._framed[0]].data["index"]
                why = f"a stream holds the frames of its last {self.replay_seconds:g} s for watchers who join late"
            else:
                from_chunk = self._chunks
                why = "the stream has ended: its frames are in its mp4"
            return protocol.replay_event(from_chunk, self.dropped_frames, why), events

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def forget_frames(self) -> None:
        """The stream has ended: no frames stay."""
        with self._lock:
            while self._framed:
                self._drop(self._framed.popleft())
