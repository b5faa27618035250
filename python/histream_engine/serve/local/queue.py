"""Jobs waiting for, and running on, the one engine: a FIFO queue served by one worker thread.

Each job (``jobs.Job``) runs as a ``session`` whose steering is the job's cancel flag (and the server's drain); prompt
switches reach the engine's stream directly (``HostStream.set_prompt`` is thread-safe). A cancel (or a watcher's
disconnect) takes a queued job out at once and stops a running one after its current chunk, which frees the engine
for the next. How a job's stream is opened is its kind's ``Opener``, given the job's request and, when it goes on
after a restart, the ``Resume`` (its checkpoint), and the newest prompt switch accepted for it.

With ``--data-dir`` the queue outlives the process (docs/serve.md, "Streams that survive"):
- ``close`` drains: the running chunk finishes and the job stops at its boundary, with its checkpoint on disk; the
  queued jobs stay queued on disk. The next start resumes the running job from its checkpoint and re-queues the rest,
  in their order.
- after a crash (SIGKILL) the next start does the same from what is on disk: a job that was running resumes from its
  last checkpoint, and counts a crash; one that crashed the server ``Resilience.max_resumes`` times after its first is
  failed with that reason instead of being tried again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from .. import protocol
from ..protocol import FINAL, Limits
from ..resilience import Resilience, Resume, resumption
from ..session import Event, Session, run
from .jobs import Job, JobStore

# (request, resume, the newest accepted prompt switch or None) -> a stream of (ChunkResult, frames) with state() and
# set_prompt(); a fresh stream (resume None) lands the switch at its first boundary, a resumed one at the seam
Opener = Callable[[dict, "Resume | None", "dict | None"], object]
# (the job, its final event, its final state: the last checkpoint's bytes, or None) -> None: what a kind does with
# what its job made once it ended (a /v1 video's files go to the video store), before the job's end is published
Finisher = Callable[[Job, dict, "bytes | None"], None]


class QueueFull(Exception):
    pass


class JobQueue:
    def __init__(self, limits: Limits, openers: dict[str, Opener], data_dir: Path | None = None, keep: int = 32,
                 resilience: Resilience | None = None, finishers: dict[str, Finisher] | None = None):
        self.limits, self.openers, self.resilience = limits, openers, resilience or Resilience()
        self.store = JobStore(data_dir, finishers or {})
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._order: deque[str] = deque()
        self._keep = keep
        self._seq = 0
        self.running: Job | None = None
        self.draining = False  # the server is stopping with a --data-dir: jobs stop at a boundary and stay on disk
        self._stop = False
        self.recovered = self._recover() if self.store.persistent else []
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

    def submit(self, kind: str, request: dict, results=None) -> Job:
        """A job of ``kind`` (an opener's name); ``results``: its stream, checked already (None: opened when it runs)."""
        with self._cond:
            try:
                self._check_room()
            except QueueFull:
                if results is not None:
                    results.close()
                raise
            self._seq += 1
            job = Job(self.store, kind, request, self.limits, self._seq, results)
            job.save()
            self._add(job)
            self._waiting.append(job)
            self._publish_positions()
            self._cond.notify_all()
            return job

    def _add(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._order.append(job.id)
        while len(self._order) > self._keep:  # forget the oldest finished jobs, and their folders
            old = self._jobs.get(self._order[0])
            if old is None or old.state not in FINAL:
                break
            self._order.popleft()
            self._jobs.pop(old.id).forget()

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """Jobs ahead of ``job`` (the running one included); None once it runs or ended."""
        with self._cond:
            if job.state != "queued" or job not in self._waiting:
                return None
            return list(self._waiting).index(job) + (self.running is not None)

    def cancel(self, job: Job) -> None:
        with self._cond:
            if job.state == "queued" and job in self._waiting:
                self._waiting.remove(job)
                if job.results is not None:
                    job.results.close()
                job.record(Event(protocol.final_event("cancelled", job.chunks, 0.0)))
                self._publish_positions()
            elif job.state == "running":
                job.cancel_requested.set()

    def stopping(self) -> None:
        """The server was told to stop (SIGTERM, Ctrl-C): with a --data-dir, from now on a watcher's leaving cancels
        nothing, and the running job stops at its next boundary."""
        if not self.store.persistent:
            return
        with self._cond:
            self.draining = True
            if self.running is not None:
                self.running.drain_requested.set()

    def close(self) -> None:
        """Without a --data-dir every job is cancelled; with one the queue drains (``stopping``) and stays on disk."""
        self.stopping()
        with self._cond:
            self._stop = True
            for job in list(self._waiting):
                if self.draining:
                    if job.results is not None:
                        job.results.close()
                else:
                    self.cancel(job)
            if self.running is not None and not self.draining:
                self.running.cancel_requested.set()
            self._cond.notify_all()
        self._worker.join(timeout=600)  # the running chunk finishes (a 1080p chunk on a busy GPU takes a while)
        self.store.close()

    # ---- a restart ----
    def _recover(self) -> list[Job]:
        """The jobs a previous run left in --data-dir: finished ones kept for their status and video, the running one
        resumed first (or failed with the reason), the queued ones re-queued in their order."""
        resumed, queued = [], []
        for record in self.store.records():
            job = Job.restore(self.store, record, self.limits)
            self._seq = max(self._seq, job.seq)
            self._add(job)
            if job.state == "queued":
                queued.append(job)
            elif job.state == "running":
                self._plan_resume(job, record)
                if job.resume is not None:
                    resumed.append(job)
        self._waiting.extend(resumed + queued)
        return resumed + queued

    def _plan_resume(self, job: Job, record: dict) -> None:
        if job.drained:
            why, lost = "the server was stopped (its running chunk finished, its state was saved)", 0
        else:
            job.crashes += 1
            why, lost = "the server stopped without saving (a crash, or SIGKILL)", job.crashes - 1
        checkpoint = job.checkpoint = job.saved_checkpoint(record["checkpoint"])
        published = checkpoint.chunk if checkpoint is not None else job.segments.chunks
        job.segments.drop_from(published)  # a chunk recorded after the checkpoint is made again from it
        job.chunks = published
        decision = resumption(self.resilience, why, lost, published, checkpoint, None, job.switch)
        job.drained = False
        if isinstance(decision, Resume):
            job.resume, job.state = decision, "queued"
            job.save()
        else:
            job.end(protocol.final_event("failed", job.chunks, 0.0, error=decision))

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
                job.attempts += 1
                job.save()  # a crash from here on counts against it at the next start
                self._publish_positions()
            try:
                self._run(job)
            finally:
                if job.results is not None:
                    job.results.close()  # the engine's stream and its caches go now, however the job ended
                job.log.forget_frames()
                with self._cond:
                    self.running = None
                    self._publish_positions()

    def _run(self, job: Job) -> None:
        """One job until it ends, drains, or is resumed again after the engine refused its state."""
        while True:
            resume, job.resume = job.resume, None
            events = run(Session(lambda: self._open(job, resume), job.request, job.segments.folder, resume=resume), job)
            retry = None
            try:
                for event in events:
                    if event.retry is not None:
                        retry = event.data["error"]
                        break
                    job.record(event)
            except Exception as exc:  # noqa: BLE001 - whatever broke, the job ends and the worker serves the next
                job.record(Event(protocol.final_event("failed", job.chunks, 0.0, error=f"{type(exc).__name__}: {exc}")))
            finally:
                events.close()
            if retry is None:
                return
            with job.opening:
                if job.results is not None:
                    job.results.close()
                job.results = None  # the next attempt opens its own
            checkpoint = job.saved_checkpoint(job.checkpoint.meta() if job.checkpoint else None)
            decision = resumption(self.resilience, f"its resume was refused: {retry}", resume.attempt if resume else 0,
                                  job.chunks, checkpoint, None, job.switch)
            if not isinstance(decision, Resume):
                job.record(Event(protocol.final_event("failed", job.chunks, 0.0, error=decision)))
                return
            job.resume = decision
            time.sleep(0.5)  # what refused it may pass (memory freed by another stream's end)

    def _open(self, job: Job, resume: Resume | None):
        """The job's stream: the one checked when it was accepted, or its kind's opener (a restart's jobs)."""
        with job.opening:  # a switch accepted from here on goes to the stream itself
            if job.results is None:
                job.results = self.openers[job.kind](job.request, resume, job.switch)
            return job.results
