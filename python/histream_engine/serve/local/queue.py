"""Streams waiting for, and running on, the one engine: a FIFO queue served by one worker thread.

Each stream's events (queue position, start, each chunk with its JPEG frames, the end) go to its ``EventLog`` and are
fanned out to every subscriber (the WebSockets watching it), which receive the history first (with the frames of the
replay window only, and a ``replay`` event saying so). A cancel (or a
watcher's disconnect) takes a queued stream out at once and stops a running one after its current chunk, which frees
the engine for the next. The worker runs each stream as a ``session`` whose steering is the stream's cancel flag:
prompt switches reach the engine's stream directly (``HostStream.set_prompt`` is thread-safe).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import uuid
from collections import deque
from pathlib import Path

from ...runtime import StreamClosedError
from .. import protocol
from ..event_log import EventLog
from ..protocol import FINAL, Limits, PromptSwitchRequest, Refused
from ..session import Event, Session, run


class QueueFull(Exception):
    pass


class StreamJob:
    def __init__(self, request: dict, results, video_path: Path, limits: Limits):
        self.id = uuid.uuid4().hex[:12]
        self.request = request  # protocol.plan's record
        self.results = results  # HostEngine.results: checked, not started
        self.video_path = video_path
        self.state = "queued"
        self.error: str | None = None
        self.reason: str | None = None  # why the server ended it (a live stream's duration)
        self.video_note: str | None = None  # what a live stream's mp4 holds of it
        self.chunks = 0
        self.cancel_requested = threading.Event()
        self.log = EventLog(limits.replay_frames, limits.replay_seconds)
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self.finish = None  # the session's finish hook (a /v1 video's), or None

    def publish(self, event: Event) -> None:
        with self._lock:
            self.log.append(event)
            subscribers = list(self._subscribers)
        for loop, q in subscribers:
            loop.call_soon_threadsafe(q.put_nowait, event)

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            notice, history = self.log.since(0)
            if notice is not None:
                q.put_nowait(Event(notice))
            for e in history:
                q.put_nowait(e)
            self._subscribers.append((loop, q))
        return q

    def unsubscribe(self, q: asyncio.Queue) -> int:
        """Returns how many subscribers are left."""
        with self._lock:
            self._subscribers = [(lp, s) for lp, s in self._subscribers if s is not q]
            return len(self._subscribers)

    def open(self):
        """The session's stream: the one checked when the request was accepted."""
        return self.results

    def boundary(self, stream) -> bool:
        """The session's steering: stop at this chunk boundary once a cancel was asked for."""
        return self.cancel_requested.is_set()

    def check_switchable(self) -> None:
        """A stream that ended, or is ending on a cancel, takes no switch: 409 (never a 400 or a 500 for the race)."""
        if self.state in FINAL or self.cancel_requested.is_set():
            state = self.state if self.state in FINAL else "being cancelled"
            raise Refused(409, f"stream {self.id} is {state}: there is nothing to switch")

    def set_prompt(self, change: PromptSwitchRequest, prompt_embeds_path: str) -> None:
        """Queue a prompt switch for the next chunk boundary (``HostStream.set_prompt``: the engine's prompt check, which
        raises ValueError or TypeError); 409 when the stream ended or is ending, however the race with its end falls."""
        self.check_switchable()
        try:
            self.results.set_prompt(change.prompt, prompt_embeds_path, change.recache)
        except StreamClosedError as exc:  # it ended between the check and the switch
            raise Refused(409, f"stream {self.id} has ended: there is nothing to switch") from exc
        self.publish(Event(protocol.prompt_event(change)))

    def status(self, position: int | None) -> dict:
        return protocol.status(self.id, self.state, self.request, self.chunks, position=position, error=self.error,
                               reason=self.reason, video=self.video_ready, video_note=self.video_note)

    @property
    def video_ready(self) -> bool:
        return self.state in ("done", "cancelled") and self.video_path.is_file()

    def record(self, event: Event) -> None:
        """What the session says, in the job's own state, then to its watchers."""
        data = event.data
        if data["type"] == "chunk":
            self.chunks += 1
        elif data["type"] in FINAL:
            self.state, self.error, self.reason, self.video_note = (data["type"], data.get("error"), data.get("reason"),
                                                                    data.get("video_note"))
            if self.video_ready:
                data["video"] = protocol.video_url(self.id)
        self.publish(event)


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

    # ---- what the transport calls ----
    def check_room(self) -> None:
        """Raises QueueFull before a request's own work (its prompt's text encoding) is done."""
        with self._cond:
            self._check_room()

    def _check_room(self) -> None:
        if len(self._waiting) >= self.limits.max_queue:
            raise QueueFull(f"{len(self._waiting)} streams are already waiting (the limit is {self.limits.max_queue}); try again later")

    def submit(self, request: dict, results, finish=None) -> StreamJob:
        """``finish``: the session's hook once the stream ends (``session.Session.finish``)."""
        with self._cond:
            try:
                self._check_room()
            except QueueFull:
                results.close()
                raise
            job = StreamJob(request, results, self.workdir / f"{uuid.uuid4().hex[:12]}.mp4", self.limits)
            job.finish = finish
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
                job.record(Event(protocol.final_event("cancelled", 0, 0.0)))
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
                session = Session(job.open, job.request, job.video_path, self.limits.max_record_seconds, finish=job.finish)
                for event in run(session, job):
                    job.record(event)
            except Exception as exc:  # noqa: BLE001 - whatever broke, the job ends and the worker serves the next
                job.record(Event(protocol.final_event("failed", job.chunks, 0.0, error=f"{type(exc).__name__}: {exc}")))
            finally:
                job.results.close()  # the engine's stream and its caches go now, however the job ended
                job.log.forget_frames()
                with self._cond:
                    self.running = None
                    self._publish_positions()
