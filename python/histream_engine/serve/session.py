"""One stream's session: drives an engine stream and turns it into the protocol's events, on either transport.

``run`` opens the stream, yields ``started``, then each chunk's event with its JPEG frames, and at the end one final
event (``done``, ``cancelled`` with the reason when the server ended it, or ``failed`` with the engine's message). It
records the mp4 (a live stream's bounded to its last ``max_record_seconds``), ends a live stream at its duration, and
asks the transport's ``Steering`` at every chunk boundary whether to stop, which is also where a transport that queues
prompt switches (Ray's registry) hands them to the stream. The stream is closed however the session ends, so its
caches go at once.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from . import protocol
from .recording import open_recorder


@dataclass
class Event:
    data: dict  # JSON-ready
    frames: list[bytes] = field(default_factory=list)  # JPEG frames that follow it on the wire


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
    open_stream: Callable[[], object]  # -> an iterator of (ChunkResult, frames [T, H, W, 3] uint8) with close()
    request: dict  # protocol.plan's record
    video_path: Path
    max_record_seconds: float
    tags: dict = field(default_factory=dict)  # added to the started and chunk events (Ray: the replica)
    # called once the stream has ended and before its end is told, with the stream, the final event and the mp4: what
    # the stream made is handed on (a /v1 video's files and final state); a hook that raises fails a done stream
    finish: Callable[[object, dict, Path], None] | None = None


def run(session: Session, steering: Steering) -> Iterator[Event]:
    """The session's events, the final one last. Never raises for the engine's errors: they end it ``failed``."""
    req, stream, recorder = session.request, None, None
    yield Event({"type": "started", **session.tags})
    t0 = time.perf_counter()
    chunks, stop_reason = 0, None
    try:
        stream = session.open_stream()
        stopped = steering.boundary(stream)
        while not stopped:
            item = next(stream, None)
            if item is None:
                break
            c, frames = item
            if recorder is None:
                recorder = open_recorder(session.video_path, req["width"], req["height"], req["live"], session.max_record_seconds)
            recorder.write(torch.from_numpy(frames))
            chunks += 1
            yield Event(protocol.chunk_event(c, frames, time.perf_counter() - t0, session.tags), [encode_jpeg(f) for f in frames])
            stopped = steering.boundary(stream)
            if not stopped and req["live"] and time.perf_counter() - t0 >= req["duration"]:
                stop_reason = f"reached its duration of {req['duration']:g} s"
                break
        note, recorder = (recorder.finish() if recorder is not None else None), None
        state = "cancelled" if stopped else "done"
        end = protocol.final_event(state, chunks, time.perf_counter() - t0, video_note=note, reason=stop_reason)
    except Exception as exc:  # noqa: BLE001 - the engine's message ends this stream; the transport serves the next
        end = protocol.final_event("failed", chunks, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    finally:
        if recorder is not None:  # failed, or the transport stopped listening: no partial mp4 is left
            with contextlib.suppress(Exception):  # the error that ended the stream is the one to report
                recorder.abort()
        if stream is not None:
            stream.close()  # the engine's stream and its caches go now, however the session ended
    if session.finish is not None:
        end = finished(session, stream, end)
    yield Event(end)


def finished(session: Session, stream, end: dict) -> dict:
    """The end, once the session's ``finish`` has taken what the stream made."""
    try:
        session.finish(stream, end, session.video_path)
    except Exception as exc:  # noqa: BLE001 - the stream's end says what went wrong; the transport serves the next
        if end["type"] == "done":
            return protocol.final_event("failed", end["chunks"], end["seconds"], error=f"{type(exc).__name__}: {exc}")
    return end
