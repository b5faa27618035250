"""Plain ``histream serve``: one engine in this process, a FIFO queue in front of it (``queue.JobQueue``), and the one
app (``app.build_app``) over it. The engine's checks run when a request arrives (``HostEngine.results``), so every
refusal is a 400 before the stream waits; prompts are encoded one request at a time on the engine's device.

A watcher's disconnect cancels its stream at once (``/api/info`` says ``"reconnect_grace_seconds": 0``): one engine
serves everyone in FIFO order here, so holding it for a client that may not come back would make every waiting
stream wait longer. With ``data_dir`` (``--data-dir``) the jobs outlive the process (``queue``): a stopping server
drains, and the next one resumes what was running from its checkpoint and runs what was queued.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from fastapi import FastAPI

from ...checkpoint import CheckpointError
from ...host import HostEngine, HostRequest
from ...runtime.stream_state import stream_state_from_bytes
from .. import protocol
from ..app import build_app
from ..embeddings import EmbeddingsDir
from ..protocol import FINAL, Limits, PromptSwitchRequest, Refused, StreamRequest
from ..openai import jobs as videos
from ..openai.options import VideoOptions
from ..openai.service import VideoService
from ..openai.store import AsyncStore, VideoStore
from ..resilience import Resilience, Resume
from .jobs import Job
from .queue import JobQueue, QueueFull
from ...wording import JSON_FIELDS, in_terms


class LocalWatch:
    def __init__(self, job: Job, queue: JobQueue):
        self.job, self.queue = job, queue
        self._events = job.subscribe(asyncio.get_running_loop())

    async def next(self):
        return await self._events.get()

    async def leave(self) -> None:
        if self.job.unsubscribe(self._events) == 0 and self.job.state not in FINAL and not self.queue.draining:
            self.queue.cancel(self.job)  # nobody is watching: free the engine after the current chunk


class LocalTransport:
    def __init__(self, host: HostEngine, description: str, limits: Limits | None = None, embeds_dir: Path | None = None,
                 videos: VideoStore | None = None, data_dir: Path | None = None, resilience: Resilience | None = None):
        self.host, self.description = host, description
        self.limits = limits or Limits()
        self.embeds = EmbeddingsDir(embeds_dir)  # a missing folder stops the server here, not every request later
        self.videos = videos  # the /v1 videos' store, which a video's stream reads its inputs from and hands its result to
        self._prompt_lock = threading.Lock()  # one prompt at a time is encoded (and checked) on the engine's device
        self.queue = JobQueue(self.limits, {"stream": self.open_stream, "video": self.open_video}, data_dir,
                              resilience=resilience, finishers={"video": self.video_ended})

    def host_request(self, record: dict) -> HostRequest:
        return HostRequest(record["prompt"], self.embeds.path(record["prompt_embeds"]), record["frames"], record["height"],
                           record["width"], record["schedule"], record["seed"], live=record["live"])

    def open_stream(self, record: dict, resume: Resume | None, switch: dict | None):
        """A ``/api/streams`` job's stream when the queue runs it after a restart: fresh (the engine's checks again),
        or going on from its checkpoint; the newest accepted switch lands at its first boundary, or at the seam."""
        if resume is not None and resume.checkpoint is not None:
            return self._resumed(resume, switch)
        with self._prompt_lock:
            stream = self.host.results(self.host_request(record))
            if switch is not None:
                stream.set_prompt(switch["prompt"], self.embeds.path(switch["prompt_embeds"]), switch["recache"])
            return stream

    def open_video(self, record: dict, resume: Resume | None, switch: dict | None):
        """A /v1 video's stream (``openai.service.stream_record``) when the queue runs it after a restart: its own
        (a resumed state, given frames), or going on from its checkpoint (a video takes no switches)."""
        if resume is not None and resume.checkpoint is not None:
            return self._resumed(resume, None)
        with self._prompt_lock:
            return videos.open_video(self.host, record, self.videos, self.embeds)

    def _resumed(self, resume: Resume, switch: dict | None):
        """A stream going on from ``resume``'s checkpoint, the newest accepted switch landing at the seam."""
        prompt, path = ("", "") if switch is None else (switch["prompt"], self.embeds.path(switch["prompt_embeds"]))
        with self._prompt_lock:
            return self.host.resume_state(stream_state_from_bytes(resume.checkpoint.state), prompt, path)

    def video_ended(self, job: Job, end: dict, state: bytes | None) -> None:
        """A /v1 video's job ended: its mp4 and final state (its last checkpoint) go to the store, or it fails."""
        videos.hand_over(self.videos, job.request["video_id"], end, job.video_path, state)

    async def info(self) -> dict:
        engine = self.host.engine
        return protocol.info(self.description, protocol.device_name(self.host), protocol.dtype_name(self.host),
                             engine.vae.name, getattr(engine, "text_encoder", None) is not None, self.limits,
                             self.embeds.names(), reconnect_grace_seconds=0)

    async def start(self, req: StreamRequest) -> dict:
        record = protocol.plan(req, self.limits)
        return await asyncio.to_thread(self._start, record)

    def _start(self, record: dict) -> dict:
        try:
            embeds_path = self.embeds.path(record["prompt_embeds"])
            self.queue.check_room()
            request = HostRequest(record["prompt"], embeds_path, record["frames"], record["height"], record["width"],
                                  record["schedule"], record["seed"], live=record["live"])
            with self._prompt_lock:
                results = self.host.results(request)
            job = self.queue.submit("stream", record, results)
        except QueueFull as exc:
            raise Refused(429, str(exc)) from exc
        except (ValueError, CheckpointError) as exc:  # every check of the engine's, before anything runs
            raise Refused(400, in_terms(exc, JSON_FIELDS)) from exc
        return job.status(self.queue.position(job))

    async def start_video(self, record: dict) -> dict:
        """A /v1 video's stream (``openai.service.stream_record``), checked by the engine now and queued as any other."""
        return await asyncio.to_thread(self._start_video, record)

    def _start_video(self, record: dict) -> dict:
        try:
            self.queue.check_room()
            with self._prompt_lock:
                results = videos.open_video(self.host, record, self.videos, self.embeds)
            job = self.queue.submit("video", record, results)
        except QueueFull as exc:
            raise Refused(429, str(exc)) from exc
        except (ValueError, CheckpointError) as exc:
            raise Refused(400, in_terms(exc, JSON_FIELDS)) from exc
        return job.status(self.queue.position(job))

    def job(self, stream_id: str) -> Job:
        job = self.queue.get(stream_id)
        if job is None:
            raise Refused(404, f"no stream {stream_id!r}")
        return job

    async def status(self, stream_id: str) -> dict:
        job = self.job(stream_id)
        return job.status(self.queue.position(job))

    async def cancel(self, stream_id: str) -> dict:
        job = self.job(stream_id)
        self.queue.cancel(job)
        return job.status(self.queue.position(job))

    async def switch(self, stream_id: str, change: PromptSwitchRequest) -> dict:
        job = self.job(stream_id)
        job.check_switchable()
        try:
            await asyncio.to_thread(self._switch, job, change)
        except (ValueError, TypeError, CheckpointError) as exc:
            raise Refused(400, in_terms(exc, JSON_FIELDS)) from exc
        return job.status(self.queue.position(job))

    def _switch(self, job: Job, change: PromptSwitchRequest) -> None:
        path = self.embeds.path(change.prompt_embeds)
        with self._prompt_lock:
            job.set_prompt(change, path, self.host._prompt)

    async def video(self, stream_id: str) -> Path:
        job = self.job(stream_id)
        if not job.video_ready:
            raise Refused(409, f"stream {stream_id} is {job.state}: its video is ready once it is done or cancelled "
                               "after at least one chunk")
        return job.video_path

    async def watch(self, stream_id: str) -> LocalWatch:
        return LocalWatch(self.job(stream_id), self.queue)

    def stopping(self) -> None:
        """The server got SIGTERM or Ctrl-C: with a --data-dir, the queue drains instead of cancelling."""
        self.queue.stopping()

    def close(self) -> None:
        self.queue.close()  # first: a video ending now still hands its files to the store
        if self.videos is not None:
            self.videos.close()


def local_app(host: HostEngine, description: str, limits: Limits | None = None, embeds_dir: Path | None = None,
              videos: VideoOptions | None = None, key_digest: bytes | None = None,
              resilience: Resilience | None = None) -> FastAPI:
    """The app of plain ``histream serve`` on ``host``: /v1's videos kept as ``videos`` says, and with its
    ``data_dir`` the jobs too, which then outlive the process (default: a temporary folder); with ``key_digest``, every
    route behind the API key (``auth``)."""
    options = videos or VideoOptions()
    store = VideoStore(options)
    transport = LocalTransport(host, description, limits, embeds_dir, store, options.data_dir, resilience)
    service = VideoService(transport, AsyncStore(lambda name, *args: asyncio.to_thread(getattr(store, name), *args)),
                           options, transport.limits)
    return build_app(transport, videos=service, key_digest=key_digest)
