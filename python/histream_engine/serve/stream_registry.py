"""Stream state for ``histream serve --ray``, kept where every ingress replica reaches it: one named Ray actor.

The registry also drives each stream: it calls the engine deployment with a streaming ``DeploymentHandle`` and
records every event it yields, so an ingress restart loses its WebSockets but neither the stream nor its history
(a client reconnects to ``/ws`` and gets the history first). Bounded: streams kept, waiting streams, watchers per
stream, and the bytes of a finished stream's mp4 (sent back from the replica, which keeps no state).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import ray

FINAL = ("done", "cancelled", "failed")
NAME, NAMESPACE = "histream-streams", "histream"


@dataclass
class Record:
    id: str
    request: dict
    state: str = "queued"
    replica: str | None = None
    error: str | None = None
    chunks: int = 0
    events: list = field(default_factory=list)  # (JSON event, [JPEG frames]); frames dropped once the stream ends
    video: bytes | None = None
    cancel: bool = False
    watchers: int = 0

    def status(self) -> dict:
        return {"id": self.id, "state": self.state, "position": None, "chunks": self.chunks, "error": self.error,
                "replica": self.replica, "request": self.request,
                "video": f"/api/streams/{self.id}/video.mp4" if self.video is not None else None}


def replica_lost(exc: BaseException) -> bool:
    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))


@ray.remote(num_cpus=0, max_concurrency=256)
class StreamRegistry:
    def __init__(self, app_name: str, deployment: str, max_waiting: int, max_watchers: int = 8, keep: int = 32,
                 max_video_bytes: int = 256 << 20):
        self.app_name, self.deployment = app_name, deployment
        self.max_waiting, self.max_watchers, self.keep, self.max_video_bytes = max_waiting, max_watchers, keep, max_video_bytes
        self.streams: dict[str, Record] = {}
        self.replicas: dict[str, dict] = {}
        self.changed = asyncio.Condition()
        self._handle = None

    # ---- replicas ----
    def replica_up(self, replica: str, device: str) -> None:
        self.replicas[replica] = {"replica": replica, "device": device, "state": "idle"}

    def replica_info(self) -> list[dict]:
        return sorted(self.replicas.values(), key=lambda r: r["replica"])

    # ---- streams ----
    async def start(self, request: dict) -> dict:
        waiting = sum(r.state == "queued" for r in self.streams.values())
        if waiting >= self.max_waiting:
            raise OverflowError(f"{waiting} streams are already waiting (the limit is {self.max_waiting}); try again later")
        rec = Record(uuid.uuid4().hex[:12], request)
        self.streams[rec.id] = rec
        self._forget_old()
        asyncio.get_running_loop().create_task(self._drive(rec))
        return rec.status()

    def status(self, stream_id: str) -> dict | None:
        rec = self.streams.get(stream_id)
        return None if rec is None else rec.status()

    def video(self, stream_id: str) -> bytes | None:
        rec = self.streams.get(stream_id)
        return None if rec is None else rec.video

    async def cancel(self, stream_id: str) -> None:
        rec = self.streams.get(stream_id)
        if rec is not None and rec.state not in FINAL:
            rec.cancel = True

    def cancelled(self, stream_id: str) -> bool:
        rec = self.streams.get(stream_id)
        return rec is None or rec.cancel

    def watch(self, stream_id: str) -> str | None:
        """None when the watcher may follow the stream, else why not."""
        rec = self.streams.get(stream_id)
        if rec is None:
            return f"no stream {stream_id!r}"
        if rec.watchers >= self.max_watchers:
            return f"stream {stream_id} already has {rec.watchers} watchers (the limit is {self.max_watchers})"
        rec.watchers += 1
        return None

    async def unwatch(self, stream_id: str) -> None:
        rec = self.streams.get(stream_id)
        if rec is not None:
            rec.watchers -= 1
            if rec.watchers == 0:  # nobody is watching: free the replica after its current chunk
                await self.cancel(stream_id)

    async def events_since(self, stream_id: str, n: int, timeout: float = 5.0) -> list:
        """The stream's events from the n-th on, waiting up to ``timeout`` s for one when there is none yet."""
        rec = self.streams.get(stream_id)
        if rec is None:
            return []
        async with self.changed:
            if len(rec.events) <= n and rec.state not in FINAL:
                try:
                    await asyncio.wait_for(self.changed.wait_for(lambda: len(rec.events) > n), timeout)
                except asyncio.TimeoutError:
                    pass
        return rec.events[n:]

    # ---- driving one stream ----
    async def _publish(self, rec: Record, data: dict, frames: list | None = None) -> None:
        async with self.changed:
            rec.events.append((data, frames or []))
            self.changed.notify_all()

    async def _drive(self, rec: Record) -> None:
        from ray import serve

        if self._handle is None:
            self._handle = serve.get_deployment_handle(self.deployment, app_name=self.app_name)
        try:
            async for item in self._handle.options(stream=True).run.remote(rec.id, rec.request):
                data = item["event"]
                if data["type"] == "started":
                    rec.state, rec.replica = "running", data["replica"]
                    self.replicas.setdefault(rec.replica, {"replica": rec.replica, "device": data["device"]})["state"] = "busy"
                elif data["type"] == "chunk":
                    rec.chunks += 1
                elif data["type"] in FINAL:
                    if item.get("video") is not None and len(item["video"]) <= self.max_video_bytes:
                        rec.video = item["video"]
                    data = {**data, "video": f"/api/streams/{rec.id}/video.mp4" if rec.video is not None else None}
                    rec.state, rec.error = data["type"], data.get("error")
                await self._publish(rec, data, item.get("frames"))
            if rec.state not in FINAL:
                raise RuntimeError("the replica's stream ended without a final event")
        except Exception as exc:  # noqa: BLE001 - whatever broke, this stream ends failed with the reason
            lost = replica_lost(exc)
            rec.state = "failed"
            rec.error = f"replica lost: {type(exc).__name__}: {exc}" if lost else f"{type(exc).__name__}: {exc}"
            if lost and rec.replica in self.replicas:
                self.replicas[rec.replica]["state"] = "lost"
            await self._publish(rec, {"type": "failed", "error": rec.error})
        finally:
            if rec.replica in self.replicas and self.replicas[rec.replica].get("state") == "busy":
                self.replicas[rec.replica]["state"] = "idle"
            async with self.changed:
                rec.events = [(d, []) for d, _ in rec.events]  # the mp4 has the frames now
                self.changed.notify_all()

    def _forget_old(self) -> None:
        for sid in list(self.streams):
            if len(self.streams) <= self.keep:
                break
            if self.streams[sid].state in FINAL:
                del self.streams[sid]
