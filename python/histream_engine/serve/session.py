"""One stream's session: drives an engine stream and turns it into the protocol's events, on either transport.

``run`` opens the stream, yields ``started`` (or ``resumed``, going on from a checkpoint), then each chunk's event with
its JPEG frames, and at the end one final event (``done``, ``cancelled`` with the reason when the server ended it, or
``failed`` with the engine's message). Each chunk's event also carries what the transport keeps where it outlives
this worker (``resilience``): the chunk's mp4 segment (``recording.write_segment``), and the stream's state at the
boundary after it, once every chunk before that boundary is in an event. The session ends a live stream at its
duration, and asks the transport's ``Steering`` at every chunk boundary whether to stop, which is also where a
transport that queues prompt switches (Ray's registry) hands them to the stream. The stream is closed however the
session ends, so its caches go at once.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from . import protocol
from ..runtime.stream_state import StreamStateError
from .recording import write_segment
from .resilience import Checkpoint, Resume


class WorkerLost(RuntimeError):
    """Part of the worker running a stream was lost mid-stream (a rank of a replica's group): the stream can go on from
    its last checkpoint once the worker is whole again."""


@dataclass
class Event:
    data: dict  # JSON-ready
    frames: list[bytes] = field(default_factory=list)  # JPEG frames that follow it on the wire
    # what the transport keeps and never sends: a chunk's mp4 segment, and the state at the boundary after it (or why
    # there is none); on a failed final event, "lost" (the worker lost a part of itself) or "refused" (the engine
    # refused a resume) where another attempt may go on
    segment: Path | None = None
    checkpoint: Checkpoint | None = None
    no_checkpoint: str | None = None
    retry: str | None = None

    def public(self) -> "Event":
        """What watchers get."""
        return self if self.segment is None and self.checkpoint is None and self.retry is None else Event(self.data, self.frames)


def encode_jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    """One ``[H, W, 3]`` uint8 frame as JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Steering(Protocol):
    def boundary(self, stream) -> bool:
        """Called before the first chunk and after each one: hand the stream what is pending for it and say whether to
        stop now (a cancel)."""


@dataclass
class Session:
    open_stream: Callable[[], object]  # -> an iterator of (ChunkResult, frames [T, H, W, 3] uint8) with close(), state()
    request: dict  # protocol.plan's record
    scratch: Path  # where each chunk's mp4 segment is written, for the transport to take
    tags: dict = field(default_factory=dict)  # added to the started and chunk events (Ray: the replica)
    resume: Resume | None = None  # going on after a lost worker: from its checkpoint (the stream opened resumes it)


class Checkpoints:
    """The stream's state at each boundary, handed to the chunk event whose publication makes it consistent. On a CPU
    that is the chunk just made; on a GPU ``state()`` finishes the decode in flight first, whose chunk is handed out
    next, so the state waits for that chunk's event."""

    def __init__(self):
        self.pending: Checkpoint | None = None
        self.last = -1  # the newest boundary taken
        self.unavailable: str | None = None  # why this stream has no state to keep (a full-history schedule)

    def attach(self, stream, event: Event, index: int, seconds: float) -> None:
        if self.unavailable is None and index + 1 > self.last:
            try:
                state = stream.state()
            except StreamStateError as exc:
                self.unavailable = str(exc)
            else:
                self.last = state.next_chunk
                self.pending = Checkpoint(state.next_chunk, seconds, state.to_bytes())
        if self.pending is not None and self.pending.chunk <= index + 1:
            event.checkpoint, self.pending = self.pending, None
        event.no_checkpoint = self.unavailable


def run(session: Session, steering: Steering) -> Iterator[Event]:
    """The session's events, the final one last. Never raises for the engine's errors: they end it ``failed``."""
    req, resume, stream = session.request, session.resume, None
    first = 0 if resume is None else resume.chunk
    if resume is None:
        yield Event({"type": "started", **session.tags})
    else:
        yield Event(protocol.resumed_event(first, resume.attempt, resume.why, session.tags))
    t0 = time.perf_counter() - (resume.checkpoint.seconds if resume is not None and resume.checkpoint is not None else 0.0)
    chunks, stop_reason, retry = first, None, None  # chunks: published, the ones before the checkpoint included
    checkpoints = Checkpoints()
    try:
        stream = session.open_stream()
        stopped = steering.boundary(stream)
        while not stopped:
            item = next(stream, None)
            if item is None:
                break
            c, frames = item
            segment = write_segment(session.scratch, c.index, torch.from_numpy(frames))
            chunks += 1
            seconds = time.perf_counter() - t0
            event = Event(protocol.chunk_event(c, frames, seconds, session.tags), [encode_jpeg(f) for f in frames], segment)
            checkpoints.attach(stream, event, c.index, seconds)
            yield event
            stopped = steering.boundary(stream)
            if not stopped and req["live"] and time.perf_counter() - t0 >= req["duration"]:
                stop_reason = f"reached its duration of {req['duration']:g} s"
                break
        state = "cancelled" if stopped else "done"
        end = protocol.final_event(state, chunks, time.perf_counter() - t0, reason=stop_reason)
    except Exception as exc:  # noqa: BLE001 - the engine's message ends this stream; the transport serves the next
        if isinstance(exc, WorkerLost):
            retry = "lost"
        elif resume is not None and resume.checkpoint is not None and chunks == first:
            retry = "refused"  # the engine refused the state, or failed going on from it: another attempt may not
        end = protocol.final_event("failed", chunks, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    finally:
        if stream is not None:
            stream.close()  # the engine's stream and its caches go now, however the session ended
    yield Event(end, retry=retry)
