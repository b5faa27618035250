"""Stream state for ``histream serve --ray``, kept where every ingress replica reaches it: one named Ray actor.

The registry also drives each stream: it calls the engine deployment with a streaming ``DeploymentHandle`` and
records every event it yields, so an ingress restart loses its WebSockets but neither the stream nor its history
(a client reconnects to ``/ws`` within the reconnect grace and gets the history first, then the rest).

Watchers are leases, not a count: an ingress renews its watcher with every poll for events, so one that dies
without saying goodbye stops counting after ``lease_s``. A stream whose watchers have all left is cancelled only if
none comes back within ``grace_s``; a stream that was never watched (an API client that polls its status) runs on.

Prompt switches reach the replica running the stream through here: ``switch`` queues one and waits; the replica takes
what is queued at each chunk boundary (``commands``, the same call that tells it about a cancel), applies it to its
stream with the engine's one prompt check, and answers (``verdicts``), so the caller gets the same 200, 400 or 409 as
on plain serve, once the switch is taken. A cancel, or the stream's end, answers every switch still waiting with 409.

A stream outlives its replica (docs/ray-serve.md, "Streams that survive"): the replica sends each chunk's mp4 segment
and the stream's checkpoint with the chunk's event, and the registry keeps them (the segments in the deployment's
folder, ``scratch``; the newest checkpoint in this actor). When the replica is lost mid-stream (``ray.kill``, a crash
in its process), or refuses a resume, the registry calls the deployment again with a ``Resume``: the stream goes on
from its checkpoint on another replica, or the restarted one, and its watchers see a ``resumed`` event; or it ends
``failed`` with why it cannot (``resilience.resumption``: no state yet, the state expired, resumed too often). The
final mp4 is the kept segments joined: every frame once.

Bounded: streams kept, waiting streams, watchers per stream, and the bytes of a finished stream's mp4. Replicas report themselves at start and on every Serve health check, and
leave the list when they stop cleanly or have not been heard from for ``replica_ttl_s``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray

from .. import protocol
from ..event_log import EventLog
from ..openai.jobs import outcome
from ..protocol import FINAL
from ..recording import Segments, record_frames
from ..resilience import Checkpoint, Resilience, Resume, resumption
from ..session import Event

NAMESPACE = "histream"


def registry_name() -> str:
    """A fresh name a deployment passes to its ingress and replicas, so two deployments never share a registry."""
    return f"histream-streams-{uuid.uuid4().hex[:8]}"


@dataclass
class Watching:
    grace_s: float = 10.0  # a stream whose watchers all left is cancelled if none comes back within this
    lease_s: float = 15.0  # a watcher not heard from for this long is gone: its ingress died without unwatching
    max_watchers: int = 8


@dataclass
class Record:
    id: str
    request: dict
    events: EventLog  # the frames of its replay window, none once the stream ends
    state: str = "queued"
    replica: str | None = None
    error: str | None = None
    reason: str | None = None  # why the server, not a client, ended it
    video_note: str | None = None
    chunks: int = 0
    video: bytes | None = None
    cancel: bool = False
    driving: bool = True  # its call to the engine deployment has not returned yet
    started: bool = False  # a replica has taken it (until then it holds a place in Ray's queue)
    watchers: dict = field(default_factory=dict)  # watcher id -> when its last poll ended (None: a poll in flight)
    left_at: float | None = None  # when it was last watched, once nobody watches it; None while watched or never
    switches: list = field(default_factory=list)  # (switch id, PromptSwitchRequest as a dict) the replica has not taken yet
    answers: dict = field(default_factory=dict)  # switch id -> (the change, the future its caller awaits)
    segments: Segments | None = None  # one mp4 a chunk, joined at the end (what a resumed attempt adds goes on from it)
    checkpoint: Checkpoint | None = None  # the newest state at a published boundary: the replica keeps nothing
    no_state: str | None = None  # why the stream keeps no state (a full-history schedule)
    switch: dict | None = None  # the newest prompt switch accepted: a resume lands it at the seam
    resumes: int = 0

    def status(self) -> dict:
        return protocol.status(self.id, self.state, self.request, self.chunks, error=self.error, reason=self.reason,
                               video=self.video is not None, video_note=self.video_note, replica=self.replica,
                               resumes=self.resumes)

    def answer(self, switch_id: str, verdict: tuple[int, str | None]) -> dict | None:
        """Answer a waiting switch; returns the change when it was accepted."""
        change, future = self.answers.pop(switch_id, (None, None))
        if future is not None and not future.done():
            future.set_result(verdict)
        return change if verdict[0] == 200 else None

    def refuse_switches(self) -> None:
        """The stream ended or is being cancelled: no switch still waiting will land."""
        self.switches = []
        why = f"stream {self.id} is {'cancelled' if self.cancel else self.state}: there is nothing to switch"
        for switch_id in list(self.answers):
            self.answer(switch_id, (409, why))


def replica_lost(exc: BaseException) -> bool:
    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))


@ray.remote(num_cpus=0, max_concurrency=256)
class StreamRegistry:
    def __init__(self, app_name: str, deployment: str, max_waiting: int, watching: Watching | None = None,
                 replica_ttl_s: float = 30.0, keep: int = 32, max_video_bytes: int = 256 << 20,
                 limits: protocol.Limits | None = None, resilience: Resilience | None = None, scratch: str | None = None,
                 videos: str | None = None):
        self.app_name, self.deployment = app_name, deployment
        self.videos = videos  # the name of /v1's store actor, which a video's stream hands its mp4 and state to
        self.max_waiting, self.keep, self.max_video_bytes = max_waiting, keep, max_video_bytes
        self.watching = watching or Watching()
        self.limits = limits or protocol.Limits()
        self.resilience = resilience or Resilience()
        self._own_scratch = None if scratch else tempfile.TemporaryDirectory(prefix="histream-registry-")
        self.scratch = Path(scratch or self._own_scratch.name)  # the deployment's folder (``scratch``)
        self.replica_ttl_s = replica_ttl_s
        self.streams: dict[str, Record] = {}
        self.replicas: dict[str, dict] = {}
        self._heard: dict[str, float] = {}  # replica -> when it last reported itself
        self.changed = asyncio.Condition()
        self._handle = None
        self._reaper = None

    def scratch_folder(self) -> str:
        return str(self.scratch)

    # ---- replicas ----
    def replica_seen(self, replica: str, info: dict) -> None:
        """A replica's report, at its start and on each Serve health check: it is alive, with this device and model."""
        self._heard[replica] = time.monotonic()
        known = self.replicas.get(replica)
        if known is None:
            self.replicas[replica] = {"replica": replica, **info, "state": "idle"}
        elif known["state"] == "lost":  # it answered after all (the error was transient)
            known["state"] = "idle"

    def replica_down(self, replica: str) -> None:
        """A replica stopping cleanly (scaled down, redeployed) leaves the list at once."""
        self.replicas.pop(replica, None)
        self._heard.pop(replica, None)

    def replica_info(self) -> list[dict]:
        now = time.monotonic()
        for replica, heard in list(self._heard.items()):
            if now - heard > self.replica_ttl_s:  # killed, or its node lost: nothing said goodbye
                self.replica_down(replica)
        return sorted(self.replicas.values(), key=lambda r: r["replica"])

    # ---- streams ----
    async def start(self, request: dict) -> dict:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        waiting = sum(r.driving and not r.started for r in self.streams.values())
        if waiting >= self.max_waiting:
            raise OverflowError(f"{waiting} streams are already waiting (the limit is {self.max_waiting}); try again later")
        rec = Record(uuid.uuid4().hex[:12], request, EventLog(self.limits.replay_frames, self.limits.replay_seconds))
        rec.segments = Segments(self.scratch / "streams" / rec.id, record_frames(self.limits.max_record_seconds,
                                                                                request["live"]))
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

    async def cancel(self, stream_id: str, reason: str | None = None) -> None:
        """A running stream ends after its current chunk; a waiting one ends now (its replica, once reached, skips it)."""
        rec = self.streams.get(stream_id)
        if rec is None or rec.state in FINAL:
            return
        rec.cancel, rec.reason = True, rec.reason or reason
        rec.refuse_switches()
        if not rec.started:
            rec.state = "cancelled"
            await self._publish(rec, protocol.final_event("cancelled", 0, 0.0, reason=rec.reason))

    def cancelled(self, stream_id: str) -> bool:
        rec = self.streams.get(stream_id)
        return rec is None or rec.cancel

    # ---- prompt switches, between a caller and the replica running the stream ----
    async def switch(self, stream_id: str, change: dict) -> tuple[int, str | None]:
        """Queue a switch for the replica, and wait until it has taken it: (200, None), or (HTTP status, why not)."""
        rec = self.streams.get(stream_id)
        if rec is None:
            return 404, f"no stream {stream_id!r}"
        if rec.state in FINAL or rec.cancel:
            return 409, f"stream {stream_id} is {'cancelled' if rec.cancel else rec.state}: there is nothing to switch"
        switch_id = uuid.uuid4().hex[:12]
        future = asyncio.get_running_loop().create_future()
        rec.switches.append((switch_id, change))
        rec.answers[switch_id] = (change, future)
        return await future

    def commands(self, stream_id: str) -> tuple[bool, list]:
        """The replica's call at each chunk boundary: whether to stop, and the switches queued since its last call."""
        rec = self.streams.get(stream_id)
        if rec is None:
            return True, []
        taken, rec.switches = rec.switches, []
        return rec.cancel, taken

    async def verdicts(self, stream_id: str, verdicts: list) -> None:
        """The replica's answers to the switches it took: (switch id, HTTP status, why not)."""
        rec = self.streams.get(stream_id)
        for switch_id, status, why in verdicts:
            change = None if rec is None else rec.answer(switch_id, (status, why))
            if change is not None:
                rec.switch = change
                await self._publish(rec, protocol.prompt_event(protocol.PromptSwitchRequest(**change)))

    def watch(self, stream_id: str) -> tuple[str | None, int, str | None]:
        """(a watcher id to poll with, 200, None), or (None, HTTP status, why this watcher may not follow the stream)."""
        rec = self.streams.get(stream_id)
        if rec is None:
            return None, 404, f"no stream {stream_id!r}"
        self._expire_watchers(rec, time.monotonic())
        if len(rec.watchers) >= self.watching.max_watchers:
            return None, 429, (f"stream {stream_id} already has {len(rec.watchers)} watchers (the limit is "
                               f"{self.watching.max_watchers})")
        watcher = uuid.uuid4().hex[:12]
        rec.watchers[watcher] = time.monotonic()
        rec.left_at = None
        return watcher, 200, None

    def unwatch(self, stream_id: str, watcher: str) -> None:
        rec = self.streams.get(stream_id)
        if rec is not None and rec.watchers.pop(watcher, False) is not False and not rec.watchers:
            rec.left_at = time.monotonic()  # the grace starts now

    async def events_since(self, stream_id: str, n: int, watcher: str | None = None,
                           timeout: float = 5.0) -> tuple[dict | None, list[Event]]:
        """The stream's events from the n-th on (``EventLog.since``: a ``replay`` event first when some lost their
        frames), waiting up to ``timeout`` s for one when there is none yet. Each call renews ``watcher``'s lease."""
        rec = self.streams.get(stream_id)
        if rec is None:
            return None, []
        self._renew(rec, watcher, None)
        try:
            async with self.changed:
                if len(rec.events) <= n and rec.state not in FINAL:
                    try:
                        await asyncio.wait_for(self.changed.wait_for(lambda: len(rec.events) > n), timeout)
                    except asyncio.TimeoutError:
                        pass
            return rec.events.since(n)
        finally:
            self._renew(rec, watcher, time.monotonic())

    # ---- watchers' leases and the reconnect grace ----
    @staticmethod
    def _renew(rec: Record, watcher: str | None, when: float | None) -> None:
        if watcher in rec.watchers:  # one that unwatched while its poll was in flight stays gone
            rec.watchers[watcher] = when

    def _expire_watchers(self, rec: Record, now: float) -> None:
        for watcher, heard in list(rec.watchers.items()):
            if heard is not None and now - heard > self.watching.lease_s:
                del rec.watchers[watcher]
                if not rec.watchers:
                    rec.left_at = now  # the grace starts once its last watcher is known to be gone

    async def _reap(self) -> None:
        grace = self.watching.grace_s
        tick = max(0.05, min(0.5, grace / 4, self.watching.lease_s / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for rec in list(self.streams.values()):
                if rec.state in FINAL:
                    continue
                self._expire_watchers(rec, now)
                if not rec.watchers and rec.left_at is not None and now - rec.left_at >= grace:
                    await self.cancel(rec.id, f"nobody watched it for {grace:g} s: its last watcher left and none "
                                              "reconnected within the reconnect grace")

    # ---- driving one stream ----
    async def _publish(self, rec: Record, data: dict, frames: list | None = None) -> None:
        async with self.changed:
            rec.events.append(Event(data, frames or []))
            self.changed.notify_all()

    async def _drive(self, rec: Record) -> None:
        """Runs the stream on the engine deployment until it ends; each time its replica is lost (or refuses a resume),
        it goes on from its last checkpoint on another replica, or the restarted one, or ends failed with the reason."""
        from ray import serve

        if self._handle is None:
            self._handle = serve.get_deployment_handle(self.deployment, app_name=self.app_name)
        resume = None
        try:
            while (lost := await self._attempt(rec, resume)) is not None:
                if (resume := await self._after_loss(rec, lost)) is None:
                    break
        finally:
            rec.driving = False
            rec.refuse_switches()
            rec.segments.discard()
            rec.checkpoint = None
            if rec.replica in self.replicas and self.replicas[rec.replica].get("state") == "busy":
                self.replicas[rec.replica]["state"] = "idle"
            async with self.changed:
                rec.events.forget_frames()  # the mp4 has the frames now
                self.changed.notify_all()

    async def _attempt(self, rec: Record, resume: Resume | None) -> str | None:
        """One call to a replica: None once the stream ended, or why the attempt was lost (the stream may go on)."""
        try:
            async for item in self._handle.options(stream=True).run.remote(rec.id, rec.request, resume):
                rec.started = True
                if rec.state in FINAL:  # cancelled while it waited: the replica only confirms it
                    continue
                if item["event"]["type"] in FINAL and item.get("retry") is not None:
                    return item["event"]["error"]
                await self._take(rec, item)
            if rec.state not in FINAL:
                raise RuntimeError("the replica's stream ended without a final event")
        except Exception as exc:  # noqa: BLE001 - whatever broke, this stream goes on or ends failed with the reason
            if rec.state in FINAL:
                return None
            if replica_lost(exc):
                if rec.replica in self.replicas:
                    self.replicas[rec.replica]["state"] = "lost"
                return f"replica lost: {type(exc).__name__}: {first_line(exc)}"
            await self._end(rec, protocol.final_event("failed", rec.chunks, 0.0, error=f"{type(exc).__name__}: {exc}"))
        return None

    async def _take(self, rec: Record, item: dict) -> None:
        """One event from the replica: kept (a chunk's segment and checkpoint), then published."""
        data = item["event"]
        if data["type"] in ("started", "resumed"):
            rec.state, rec.replica = "running", data["replica"]
            if rec.replica in self.replicas:
                self.replicas[rec.replica]["state"] = "busy"
        elif data["type"] == "chunk":
            rec.chunks += 1
            if item.get("segment") is not None:
                await asyncio.to_thread(rec.segments.add, data["index"], data["frames"], item["segment"])
            if item.get("checkpoint") is not None:
                rec.checkpoint = item["checkpoint"]
            rec.no_state = item.get("no_checkpoint")
        elif data["type"] in FINAL:
            await self._end(rec, data)
            return
        await self._publish(rec, data, item.get("frames"))

    async def _after_loss(self, rec: Record, why: str) -> Resume | None:
        """After a lost attempt: the ``Resume`` to run next, or None once the stream has ended (cancelled meanwhile,
        or failed with the reason it cannot go on)."""
        if rec.cancel:
            await self._end(rec, protocol.final_event("cancelled", rec.chunks, 0.0, reason=rec.reason))
            return None
        decision = resumption(self.resilience, why, rec.resumes, rec.chunks, rec.checkpoint, rec.no_state, rec.switch)
        if isinstance(decision, str):
            await self._end(rec, protocol.final_event("failed", rec.chunks, 0.0, error=decision))
            return None
        rec.resumes = decision.attempt
        rec.segments.drop_from(decision.chunk)
        return decision

    async def _end(self, rec: Record, data: dict) -> None:
        """The stream's final event: its mp4 joined from the kept segments (unless it failed), its record final."""
        mp4 = None
        if data["type"] != "failed":
            note, mp4 = await asyncio.to_thread(self._join, rec)
            data = {**data, "video": protocol.video_url(rec.id) if rec.video is not None else None, "video_note": note,
                    "reason": rec.reason or data.get("reason")}
        if "v1" in rec.request and self.videos is not None:  # before the end is told: a reader then finds it stored
            data = await self._hand_video(rec, data, mp4)
        rec.state, rec.error, rec.reason = data["type"], data.get("error"), data.get("reason")
        rec.video_note = data.get("video_note")
        rec.refuse_switches()
        await self._publish(rec, data)

    def _join(self, rec: Record) -> tuple[str | None, bytes | None]:
        """The kept segments joined: (what the mp4 holds of the stream, its bytes); the bytes are kept for
        ``/api/streams/{id}/video`` within ``max_video_bytes``."""
        out = rec.segments.folder.with_name(f"{rec.id}.mp4")
        try:
            note = rec.segments.join(out)
            mp4 = out.read_bytes() if out.is_file() else None
            if mp4 is not None and len(mp4) <= self.max_video_bytes:
                rec.video = mp4
            return note, mp4
        finally:
            out.unlink(missing_ok=True)
            rec.segments.discard()

    async def _hand_video(self, rec: Record, data: dict, mp4: bytes | None) -> dict:
        """A /v1 video's stream ended: its stitched mp4 (every chunk once, whichever replicas made them) and final
        state (the last checkpoint) go to the store, or it fails there with the reason; a store that cannot take it
        fails the stream too."""
        state = rec.checkpoint.state if rec.checkpoint is not None else None
        name, args = outcome(data, mp4, state)
        try:
            store = ray.get_actor(self.videos, namespace=NAMESPACE)
            await store.call.remote(name, rec.request["video_id"], *args)
        except Exception as exc:  # noqa: BLE001 - the stream's end says what went wrong
            if data["type"] == "done":
                return protocol.final_event("failed", rec.chunks, data.get("seconds", 0.0), error=f"{type(exc).__name__}: {exc}")
        return data

    def _forget_old(self) -> None:
        for sid in list(self.streams):
            if len(self.streams) <= self.keep:
                break
            if self.streams[sid].state in FINAL:
                del self.streams[sid]


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]
