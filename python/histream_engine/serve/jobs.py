"""Streams waiting for, and running on, the one engine: a FIFO queue served by one worker thread.

Each stream's events (queue position, start, each chunk with its JPEG frames, the end) are kept in order and
fanned out to every subscriber (the WebSockets watching it), which receive the history first, so one that
connects late misses nothing. A cancel (or a watcher's disconnect) takes a queued stream out at once and stops
a running one after its current chunk, which frees the engine for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..video import FPS, Mp4Writer
from .recording import RollingRecorder

FINAL = ("done", "cancelled", "failed")


@dataclass
class Limits:
    max_frames: int = 161
    max_side: int = 1920  # pixels, height and width each
    max_queue: int = 8  # streams waiting (the running one not counted)
    max_live_seconds: float = 300.0  # the longest a live stream may run
    max_record_seconds: float = 60.0  # a live stream's mp4 keeps at most its last this many seconds


class QueueFull(Exception):
    pass


def encode_jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    """One ``[H, W, 3]`` uint8 frame as JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Event:
    data: dict  # JSON-ready
    frames: list[bytes] = field(default_factory=list)  # JPEG frames that follow it on the wire


class StreamJob:
    def __init__(self, request: dict, results: Iterator, video_path: Path):
        self.id = uuid.uuid4().hex[:12]
        self.request = request
        self.results = results  # HostEngine.results: checked, not started
        self.video_path = video_path
        self.state = "queued"
        self.error: str | None = None
        self.video_note: str | None = None  # what a live stream's mp4 holds of it
        self.chunks: list[dict] = []
        self.cancel_requested = threading.Event()
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    def publish(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            subscribers = list(self._subscribers)
        for loop, q in subscribers:
            loop.call_soon_threadsafe(q.put_nowait, event)

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            for e in self._events:
                q.put_nowait(e)
            self._subscribers.append((loop, q))
        return q

    def unsubscribe(self, q: asyncio.Queue) -> int:
        """Returns how many subscribers are left."""
        with self._lock:
            self._subscribers = [(lp, s) for lp, s in self._subscribers if s is not q]
            return len(self._subscribers)

    def forget_frames(self) -> None:
        """Once a stream has ended its JPEGs leave the history (a late watcher gets the events; the mp4 has the frames)."""
        with self._lock:
            self._events = [Event(e.data) for e in self._events]

    @property
    def live(self) -> bool:
        return bool(self.request.get("live"))

    def set_prompt(self, prompt: str, prompt_embeds_path: str, recache: bool) -> None:
        """Queue a prompt switch for the next chunk boundary (``HostStream.set_prompt``: checked here, raises ValueError)."""
        if self.state in FINAL:
            raise ValueError(f"stream {self.id} is {self.state}: there is nothing to switch")
        self.results.set_prompt(prompt, prompt_embeds_path, recache)
        self.publish(Event({"type": "prompt", "accepted": True, "recache": recache,
                            "prompt": prompt[:200] if prompt else None, "prompt_embeds": Path(prompt_embeds_path).name or None}))

    def status(self, position: int | None) -> dict:
        return {"id": self.id, "state": self.state, "position": position, "chunks": len(self.chunks), "error": self.error,
                "request": self.request, "video": f"/api/streams/{self.id}/video.mp4" if self.video_ready else None,
                "video_note": self.video_note}

    @property
    def video_ready(self) -> bool:
        return self.state in ("done", "cancelled") and self.video_path.is_file()


class JobQueue:
    def __init__(self, limits: Limits, workdir: Path | None = None, keep: int = 32):
        self.limits = limits
        self._tmp = tempfile.TemporaryDirectory(prefix="histream-serve-") if workdir is None else None
        self.workdir = Path(workdir or self._tmp.name)
        self._cond = threading.Condition()
        self._waiting: deque[StreamJob] = deque()
        self._jobs: dict[str, StreamJob] = {}
        self._order: deque[str] = deque()
        self._keep = keep
        self.running: StreamJob | None = None
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="histream-serve-worker", daemon=True)
        self._worker.start()

    # ---- what the API calls ----
    def check_room(self) -> None:
        """Raises QueueFull before a request's own work (its prompt's text encoding) is done."""
        with self._cond:
            if len(self._waiting) >= self.limits.max_queue:
                raise QueueFull(f"{len(self._waiting)} streams are already waiting (the limit is {self.limits.max_queue}); try again later")

    def submit(self, request: dict, results: Iterator) -> StreamJob:
        with self._cond:
            if len(self._waiting) >= self.limits.max_queue:
                results.close()
                raise QueueFull(f"{len(self._waiting)} streams are already waiting (the limit is {self.limits.max_queue}); try again later")
            job = StreamJob(request, results, self.workdir / f"{uuid.uuid4().hex[:12]}.mp4")
            self._jobs[job.id] = job
            self._order.append(job.id)
            while len(self._order) > self._keep:  # forget the oldest finished streams, and their videos
                old = self._jobs.get(self._order[0])
                if old is None or old.state not in FINAL:
                    break
                self._order.popleft()
                self._jobs.pop(old.id).video_path.unlink(missing_ok=True)
            self._waiting.append(job)
            self._publish_positions()
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> StreamJob | None:
        return self._jobs.get(job_id)

    def position(self, job: StreamJob) -> int | None:
        """Streams ahead of ``job`` (the running one included); None once it runs or ended."""
        with self._cond:
            if job.state != "queued":
                return None
            return list(self._waiting).index(job) + (self.running is not None)

    def cancel(self, job: StreamJob) -> None:
        with self._cond:
            if job.state == "queued" and job in self._waiting:
                self._waiting.remove(job)
                job.results.close()
                job.state = "cancelled"
                job.publish(Event({"type": "cancelled", "chunks": 0}))
                self._publish_positions()
            elif job.state == "running":
                job.cancel_requested.set()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            for job in list(self._waiting):
                self.cancel(job)
            if self.running is not None:
                self.running.cancel_requested.set()
            self._cond.notify_all()
        self._worker.join(timeout=60)
        if self._tmp is not None:
            self._tmp.cleanup()

    # ---- the worker ----
    def _publish_positions(self) -> None:
        ahead = int(self.running is not None)
        for i, job in enumerate(self._waiting):
            job.publish(Event({"type": "queued", "position": ahead + i}))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job = self.running = self._waiting.popleft()
                job.state = "running"
                self._publish_positions()
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - whatever broke, the job ends and the worker serves the next
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
                job.publish(Event({"type": "failed", "error": job.error}))
            finally:
                job.results.close()  # the engine's stream and its caches go now, however the job ended
                job.forget_frames()
                with self._cond:
                    self.running = None
                    self._publish_positions()

    def _run(self, job: StreamJob) -> None:
        req = job.request
        job.publish(Event({"type": "started"}))
        t0 = time.perf_counter()
        writer = None
        ended_by_limit = None
        try:
            for c, frames in job.results:
                if writer is None:
                    writer = RollingRecorder(job.video_path, req["width"], req["height"], self.limits.max_record_seconds) \
                        if job.live else Mp4Writer(job.video_path, req["width"], req["height"])
                writer.write(torch.from_numpy(frames))
                info = {"type": "chunk", "index": c.index, "frames": int(frames.shape[0]), "width": int(frames.shape[2]),
                        "height": int(frames.shape[1]), "denoise_seconds": c.seconds, "vae_seconds": c.vae_seconds,
                        "seconds_since_start": time.perf_counter() - t0, "forwards": c.forwards, "recache": c.recache,
                        "tokens_attended": c.tokens_attended, "cache_bytes": c.cache_bytes, "run_mode": c.run_mode,
                        "realtime_seconds_per_frame": 1.0 / FPS, "prompt_switch": _switch(c.prompt_switch)}
                job.chunks.append(info)
                job.publish(Event(info, [encode_jpeg(f) for f in frames]))
                if job.cancel_requested.is_set():
                    break
                if job.live and time.perf_counter() - t0 >= req["duration"]:
                    ended_by_limit = f"reached its duration of {req['duration']:g} s"
                    break
            if writer is not None:
                if job.live:
                    kept, total = writer.kept_frames / FPS, writer.total_frames / FPS
                    job.video_note = (f"the last {kept:.1f} s of {total:.1f} s (this server keeps at most "
                                      f"{self.limits.max_record_seconds:g} s of a live stream)") if kept < total else None
                writer.close()
                writer = None
            job.state = "cancelled" if job.cancel_requested.is_set() else "done"
            job.publish(Event({"type": job.state, "chunks": len(job.chunks), "seconds": time.perf_counter() - t0,
                               "video": f"/api/streams/{job.id}/video.mp4" if job.video_ready else None,
                               "video_note": job.video_note, "reason": ended_by_limit}))
        except Exception:
            if writer is not None:
                with contextlib.suppress(Exception):  # the error that ended the stream is the one to report
                    writer.abort()
            raise


def _switch(switch) -> dict | None:
    """A chunk's ``prompt_switch`` as JSON: the chunk table marks where one landed."""
    if switch is None:
        return None
    return {"recache": switch.recache, "forwards": switch.forwards, "seconds": switch.seconds}
