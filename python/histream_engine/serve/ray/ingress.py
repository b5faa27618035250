"""The HTTP side of ``histream serve --ray``: plain serve's very app (``app.build_app``) over the stream registry.

The ``Ingress`` deployment keeps nothing: stream state lives in the ``StreamRegistry`` actor, which drives each stream
on the engine deployment (``replica.EngineReplica``). Serve builds the app on each ingress replica after the
constructor (``__serve_build_asgi_app__``, Ray >= 2.56), so the routes, the guards and the WebSocket pump are the
ones plain serve runs; ``RayTransport`` is all that differs. Statuses also name the replica (``"replica"``);
``/api/info`` lists the replicas with their device, dtype, decoder and state.

The ingress checks what it can without a model (the limits, the request's shape, the embeddings file's name) so a bad
request waits for no replica; the replica checks the rest (the prompt) with the engine's checks, as plain serve does.
"""

from __future__ import annotations

from collections import deque

import ray
from fastapi import FastAPI
from ray import serve

from ...host import HostRequest, request_schedule
from ...runtime.engine_config import EngineConfig
from ...runtime.video_request import check_video_request
from .. import protocol
from ..app import build_app
from ..embeddings import EmbeddingsDir
from ..openai.options import VideoOptions
from ..openai.service import VideoService
from ..protocol import FINAL, Limits, PromptSwitchRequest, Refused, StreamRequest
from ..session import Event
from .registry import NAMESPACE, Watching
from .videos import async_store
from ...wording import JSON_FIELDS, in_terms


def joined(replicas: list[dict], key: str) -> str:
    """One /api/info field over the replicas ("CPU", or "NVIDIA H100, NVIDIA H200" on a mixed cluster)."""
    return ", ".join(sorted({str(r[key]) for r in replicas if key in r})) or "starting"


class RayWatch:
    """A watcher that polls the registry for the stream's events; each poll renews its lease there."""

    def __init__(self, registry, stream_id: str, watcher: str):
        self.registry, self.stream_id, self.watcher = registry, stream_id, watcher
        self.seen, self.ended = 0, False
        self._buffer: deque[Event] = deque()

    async def next(self) -> Event | None:
        while not self._buffer and not self.ended:
            try:
                notice, events = await self.registry.events_since.remote(self.stream_id, self.seen, self.watcher)
            except Exception as exc:  # noqa: BLE001 - this socket cannot follow the stream any more; say why
                self.ended = True
                return Event(protocol.final_event("failed", 0, 0.0, error=f"the stream registry is unreachable: "
                                                                           f"{type(exc).__name__}"))
            self.seen += len(events)
            if notice is not None:
                self._buffer.append(Event(notice))
            self._buffer.extend(events)
            self.ended = bool(events) and events[-1].data["type"] in FINAL
        return self._buffer.popleft() if self._buffer else None

    async def leave(self) -> None:
        await self.registry.unwatch.remote(self.stream_id, self.watcher)  # the reconnect grace starts if it was the last


class RayTransport:
    def __init__(self, registry, description: str, limits: Limits, embeds: EmbeddingsDir, watching: Watching):
        self.registry, self.description, self.limits, self.embeds, self.watching = registry, description, limits, embeds, watching

    async def info(self) -> dict:
        replicas = await self.registry.replica_info.remote()
        return protocol.info(self.description, joined(replicas, "device"), joined(replicas, "dtype"), joined(replicas, "decoder"),
                             bool(replicas) and all(r.get("text_encoder") for r in replicas), self.limits,
                             self.embeds.names(), self.watching.grace_s, replicas=replicas)

    async def start(self, req: StreamRequest) -> dict:
        record = protocol.plan(req, self.limits)
        try:  # the engine's shape checks and the file's name, here, so a bad request waits for no replica
            self.embeds.path(record["prompt_embeds"])
            request = HostRequest(record["prompt"], record["prompt_embeds"], record["frames"], record["height"], record["width"],
                                  record["schedule"], record["seed"], live=record["live"])
            check_video_request(request.frames, request.height, request.width, EngineConfig().chunk_size,
                                request_schedule(request))
        except ValueError as exc:
            raise Refused(400, in_terms(exc, JSON_FIELDS)) from exc
        try:
            return await self.registry.start.remote(record)
        except OverflowError as exc:
            raise Refused(429, str(exc).splitlines()[-1]) from exc

    async def status(self, stream_id: str) -> dict:
        status = await self.registry.status.remote(stream_id)
        if status is None:
            raise Refused(404, f"no stream {stream_id!r}")
        return status

    async def cancel(self, stream_id: str) -> dict:
        await self.status(stream_id)
        await self.registry.cancel.remote(stream_id)
        return await self.status(stream_id)

    async def switch(self, stream_id: str, change: PromptSwitchRequest) -> dict:
        """Answered once the replica running the stream has taken the switch, at its next chunk boundary."""
        status = await self.status(stream_id)
        if status["state"] in FINAL:
            raise Refused(409, f"stream {stream_id} is {status['state']}: there is nothing to switch")
        try:
            self.embeds.path(change.prompt_embeds)  # the replica resolves it again, on its node
        except ValueError as exc:
            raise Refused(400, in_terms(exc, JSON_FIELDS)) from exc
        code, why = await self.registry.switch.remote(stream_id, change.model_dump())
        if code != 200:
            raise Refused(code, why)
        return await self.status(stream_id)

    async def video(self, stream_id: str) -> bytes:
        status = await self.status(stream_id)
        data = await self.registry.video.remote(stream_id)
        if data is None:
            raise Refused(409, f"stream {stream_id} is {status['state']}: its video is ready once it is done or cancelled "
                               "after at least one chunk")
        return data

    async def watch(self, stream_id: str) -> RayWatch:
        watcher, code, why = await self.registry.watch.remote(stream_id)
        if watcher is None:
            raise Refused(code, why)
        return RayWatch(self.registry, stream_id, watcher)

    async def start_video(self, record: dict) -> dict:
        """A /v1 video's stream (``openai.service.stream_record``, its size and length checked there); the replica that
        takes it runs the engine's checks, and a refusal there fails the video."""
        try:
            return await self.registry.start.remote(record)
        except OverflowError as exc:
            raise Refused(429, str(exc).splitlines()[-1]) from exc

    def close(self) -> None:
        pass  # the registry belongs to the deploying process, not to an ingress replica


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    def __init__(self, engine, description: str, limits: Limits, embeds_dir: str | None, registry: str, watching: Watching,
                 videos: tuple[VideoOptions, str, bytes | None] | None = None):
        """``videos``: /v1's options, its store actor's name and the API key's digest (None: no key)."""
        self.engine = engine  # bound so that the application deploys the engine replicas with the ingress
        self.transport = RayTransport(ray.get_actor(registry, namespace=NAMESPACE), description, limits,
                                      EmbeddingsDir(embeds_dir), watching)
        options, store, self.key_digest = videos or (VideoOptions(), None, None)
        self.videos = None if store is None else VideoService(self.transport, async_store(store), options, limits)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.transport, "histream serve --ray", self.videos, self.key_digest)
