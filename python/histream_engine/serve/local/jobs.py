"""Plain ``histream serve``'s jobs: one folder each, which outlives the process when the server has a ``--data-dir``.

A job is a request of some kind (``"stream"``: ``/api/streams``; a transport may add kinds) plus, once it has run, where
it may go on from: ``jobs/<id>/job.json`` (the record: kind, request, state, attempts, chunks published, the newest
accepted prompt switch, the checkpoint's chunk and seconds), ``state.safetensors`` (the newest checkpoint, the
stream's state without rings, written beside and renamed into place), ``segments/`` (one mp4 a chunk, joined at the end,
``recording.Segments``) and ``video.mp4``. Without ``--data-dir`` the folders live in a temporary folder that goes
with the server. Each job's events go to its ``EventLog`` and are fanned out to every subscriber (the WebSockets
watching it), history first.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ...runtime import StreamClosedError
from ...runtime.stream_state import METADATA_KEY
from .. import protocol
from ..event_log import EventLog
from ..protocol import FINAL, Limits, PromptSwitchRequest, Refused
from ..recording import Segments, record_frames
from ..resilience import Checkpoint, Resume
from ..session import Event

STATE_FILE, RECORD_FILE = "state.safetensors", "job.json"


class JobStore:
    """The folder jobs live in: ``data_dir/jobs`` (kept across restarts), or a temporary one removed at ``close``."""

    def __init__(self, data_dir: Path | None, finishers: dict | None = None):
        self.finishers = finishers or {}  # kind -> queue.Finisher, called at a job's end
        self.persistent = data_dir is not None
        self._tmp = None if self.persistent else tempfile.TemporaryDirectory(prefix="histream-serve-")
        self.root = (Path(data_dir) if self.persistent else Path(self._tmp.name)) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def records(self) -> list[dict]:
        """The jobs a previous run left, oldest first (a folder without a readable record is a job that never got one
        written: it is removed)."""
        found = []
        for folder in self.root.iterdir():
            try:
                found.append(json.loads((folder / RECORD_FILE).read_text()))
            except (OSError, ValueError):
                shutil.rmtree(folder, ignore_errors=True)
        return sorted(found, key=lambda r: r["seq"])

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def state_boundary(data: bytes) -> int:
    """The chunk a saved stream state goes on from, read from its safetensors header alone."""
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return int(json.loads(header["__metadata__"][METADATA_KEY])["next_chunk"])


class Job:
    def __init__(self, store: JobStore, kind: str, request: dict, limits: Limits, seq: int, results=None,
                 job_id: str | None = None):
        self.id = job_id or uuid.uuid4().hex[:12]
        self.kind, self.request, self.seq, self.store = kind, request, seq, store  # request: protocol.plan's record
        self.results = results  # a stream checked when the request came (None: opened when the job runs)
        self.folder = store.root / self.id
        self.folder.mkdir(exist_ok=True)
        self.video_path = self.folder / "video.mp4"
        self.segments = Segments(self.folder / "segments", record_frames(limits.max_record_seconds, request["live"]))
        self.state = "queued"
        self.error: str | None = None
        self.reason: str | None = None  # why the server ended it (a live stream's duration)
        self.video_note: str | None = None  # what a live stream's mp4 holds of it
        self.chunks = 0
        self.attempts = 0  # times it started running (a resume after a restart included)
        self.crashes = 0  # runs that ended with the server's process, neither finishing nor draining the job
        self.switch: dict | None = None  # the newest prompt switch accepted (a resume lands it at the seam)
        self.checkpoint: Checkpoint | None = None  # the newest checkpoint's chunk and seconds (its state is on disk)
        self.resume: Resume | None = None  # how its next run goes on (set when a restart found it running)
        self.drained = False  # the server stopped at a boundary with it running: it resumes at the next start
        self.opening = threading.Lock()  # held while its stream is opened: a switch goes to the stream or to the opener
        self.cancel_requested = threading.Event()
        self.drain_requested = threading.Event()
        self.log = EventLog(limits.replay_frames, limits.replay_seconds)
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    # ---- the record on disk ----
    def save(self) -> None:
        """job.json, written beside and renamed into place (a crash leaves the old record or the new one)."""
        if not self.store.persistent:
            return
        record = {"id": self.id, "kind": self.kind, "seq": self.seq, "request": self.request, "state": self.state,
                  "error": self.error, "reason": self.reason, "video_note": self.video_note, "chunks": self.chunks,
                  "attempts": self.attempts, "crashes": self.crashes, "switch": self.switch, "drained": self.drained,
                  "checkpoint": None if self.checkpoint is None else self.checkpoint.meta(), "saved_at": time.time()}
        with self._lock:
            write_atomically(self.folder / RECORD_FILE, json.dumps(record).encode())

    @classmethod
    def restore(cls, store: JobStore, record: dict, limits: Limits) -> "Job":
        """A job as a previous run left it; its stream is opened when it runs again."""
        job = cls(store, record["kind"], record["request"], limits, record["seq"], job_id=record["id"])
        for name in ("state", "error", "reason", "video_note", "chunks", "attempts", "crashes", "switch", "drained"):
            setattr(job, name, record[name])
        return job

    def saved_checkpoint(self, meta: dict | None) -> Checkpoint | None:
        """The checkpoint on disk (its file is the truth; ``meta``, the record's, gives its seconds), or None."""
        path = self.folder / STATE_FILE
        if not path.is_file():
            return None
        data = path.read_bytes()
        chunk = state_boundary(data)
        seconds = meta["seconds"] if meta and meta["chunk"] == chunk else (meta or {}).get("seconds", 0.0)
        return Checkpoint(chunk, seconds, data, made_at=path.stat().st_mtime)

    # ---- watchers ----
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

    # ---- prompt switches ----
    def check_switchable(self) -> None:
        """A stream that ended, or is ending on a cancel, takes no switch: 409 (never a 400 or a 500 for the race)."""
        if self.state in FINAL or self.cancel_requested.is_set():
            state = self.state if self.state in FINAL else "being cancelled"
            raise Refused(409, f"stream {self.id} is {state}: there is nothing to switch")

    def set_prompt(self, change: PromptSwitchRequest, prompt_embeds_path: str, check) -> None:
        """Queue a prompt switch for the next chunk boundary (``HostStream.set_prompt``: the engine's prompt check, which
        raises ValueError or TypeError; ``check(prompt, path)`` is that check for a job whose stream is not open yet,
        which lands the switch when it opens); 409 when the stream ended or is ending, however the race falls."""
        self.check_switchable()
        with self.opening:
            try:
                if self.results is not None:
                    self.results.set_prompt(change.prompt, prompt_embeds_path, change.recache)
                else:
                    check(change.prompt, prompt_embeds_path)
            except StreamClosedError as exc:  # it ended between the check and the switch
                raise Refused(409, f"stream {self.id} has ended: there is nothing to switch") from exc
            self.switch = change.model_dump()
        self.save()
        self.publish(Event(protocol.prompt_event(change)))

    # ---- what the session says ----
    def boundary(self, stream) -> bool:
        """The session's steering: stop at this chunk boundary once a cancel, or the server's drain, was asked for."""
        return self.cancel_requested.is_set() or self.drain_requested.is_set()

    def status(self, position: int | None) -> dict:
        return protocol.status(self.id, self.state, self.request, self.chunks, position=position, error=self.error,
                               reason=self.reason, video=self.video_ready, video_note=self.video_note,
                               attempts=self.attempts)

    @property
    def video_ready(self) -> bool:
        return self.state in ("done", "cancelled") and self.video_path.is_file()

    def record(self, event: Event) -> None:
        """What the session says, kept (the segment, the checkpoint) and in the job's own state, then to its watchers.
        A stop for the server's drain is kept from the watchers: the job is not over, it goes on at the next start."""
        data = event.data
        if data["type"] == "chunk":
            self.chunks += 1
            self.segments.add(data["index"], data["frames"], event.segment)
            if event.checkpoint is not None:
                write_atomically(self.folder / STATE_FILE, event.checkpoint.state)
                self.checkpoint = event.checkpoint
            self.save()
        elif data["type"] in FINAL:
            if self.drain_requested.is_set() and not self.cancel_requested.is_set() and data["type"] == "cancelled":
                self.drained = True  # running, at a boundary, its checkpoint on disk
                self.save()
                return
            self.end(data)
        self.publish(event.public())

    def end(self, data: dict) -> None:
        """The job is over: its video joined from the segments (or, failed, the segments dropped), the record final."""
        if data["type"] != "failed":
            data["video_note"] = self.segments.join(self.video_path)
        self.segments.discard()
        finish = self.store.finishers.get(self.kind)
        if finish is not None:
            state = self.folder / STATE_FILE
            try:
                finish(self, data, state.read_bytes() if state.is_file() else None)
            except Exception as exc:  # noqa: BLE001 - the job's end says what went wrong; the worker serves the next
                if data["type"] == "done":
                    data.update(type="failed", error=f"{type(exc).__name__}: {exc}")
        (self.folder / STATE_FILE).unlink(missing_ok=True)
        self.state, self.error, self.reason, self.video_note = (data["type"], data.get("error"), data.get("reason"),
                                                                data.get("video_note"))
        if self.video_ready:
            data["video"] = protocol.video_url(self.id)
        self.save()

    def forget(self) -> None:
        """Its folder goes (the queue keeps only its newest finished jobs)."""
        shutil.rmtree(self.folder, ignore_errors=True)
