"""Plain ``histream serve``: one engine in this process, a FIFO queue in front of it (``queue.JobQueue``), and the one
app (``app.build_app``) over it. The engine's checks run when a request arrives (``HostEngine.results``), so every
refusal is a 400 before the stream waits; prompts are encoded one request at a time on the engine's device.

A watcher's disconnect cancels its stream at once (``/api/info`` says ``"reconnect_grace_seconds": 0``): one engine
serves everyone in FIFO order here, so holding it for a client that may not come back would make every waiting
stream wait longer.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from fastapi import FastAPI

from ...checkpoint import CheckpointError
from ...host import HostEngine, HostRequest
from .. import protocol
from ..app import build_app
from ..embeddings import EmbeddingsDir
from ..protocol import FINAL, Limits, PromptSwitchRequest, Refused, StreamRequest
from ..openai import jobs
from ..openai.options import VideoOptions
from ..openai.service import VideoService
from ..openai.store import AsyncStore, VideoStore
from .queue import JobQueue, QueueFull, StreamJob
from ...wording import JSON_FIELDS, in_terms


class LocalWatch:
    def __init__(self, job: StreamJob, queue: JobQueue):
        self.job, self.queue = job, queue
        self._events = job.subscribe(asyncio.get_running_loop())

    async def next(self):
        return await self._events.get()

    async def leave(self) -> None:
        if self.job.unsubscribe(self._events) == 0 and self.job.state not in FINAL:
            self.queue.cancel(self.job)  # nobody is watching: free the engine after the current chunk


class LocalTransport:
    def __init__(self, host: HostEngine, description: str, limits: Limits | None = None, embeds_dir: Path | None = None,
                 workdir: Path | None = None, videos: VideoStore | None = None):
        self.host, self.description = host, description
        self.limits = limits or Limits()
        self.embeds = EmbeddingsDir(embeds_dir)  # a missing folder stops the server here, not every request later
        self.queue = JobQueue(self.limits, workdir)
        self.videos = videos  # the /v1 videos' store, which a video's stream reads its inputs from and hands its result to
        self._prompt_lock = threading.Lock()  # one prompt at a time is encoded (and checked) on the engine's device

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
            job = self.queue.submit(record, results)
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
                results = jobs.open_video(self.host, record, self.videos, self.embeds)
            finish = jobs.finisher(self.videos, record["video_id"], send_bytes=False)
            job = self.queue.submit(record, results, finish=finish)
        except QueueFull as exc:
            raise Refused(429, str(exc)) from exc
        except (ValueError, CheckpointError) as exc:
            raise Refused(400, in_terms(exc, JSON_FIELDS)) from exc
        return job.status(self.queue.position(job))

    def job(self, stream_id: str) -> StreamJob:
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

    def _switch(self, job: StreamJob, change: PromptSwitchRequest) -> None:
        path = self.embeds.path(change.prompt_embeds)
        with self._prompt_lock:
            job.set_prompt(change, path)

    async def video(self, stream_id: str) -> Path:
        job = self.job(stream_id)
        if not job.video_ready:
            raise Refused(409, f"stream {stream_id} is {job.state}: its video is ready once it is done or cancelled "
                               "after at least one chunk")
        return job.video_path

    async def watch(self, stream_id: str) -> LocalWatch:
        return LocalWatch(self.job(stream_id), self.queue)

    def close(self) -> None:
        self.queue.close()
        if self.videos is not None:
            self.videos.close()


def local_app(host: HostEngine, description: str, limits: Limits | None = None, embeds_dir: Path | None = None,
              workdir: Path | None = None, videos: VideoOptions | None = None, key_digest: bytes | None = None) -> FastAPI:
    """The app of plain ``histream serve`` on ``host``, with /v1's videos kept as ``videos`` says (default: in a
    temporary folder) and, with ``key_digest``, every route behind the API key (``auth``)."""
    options = videos or VideoOptions()
    store = VideoStore(options)
    transport = LocalTransport(host, description, limits, embeds_dir, workdir, store)
    service = VideoService(transport, AsyncStore(lambda name, *args: asyncio.to_thread(getattr(store, name), *args)),
                           options, transport.limits)
    return build_app(transport, videos=service, key_digest=key_digest)
