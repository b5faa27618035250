"""The engine deployment of ``histream serve --ray``: each replica holds one engine and runs one stream at a time.

``run`` is a streaming method (the caller uses ``handle.options(stream=True)``): it runs the stream as a ``session``
(the same loop as plain serve's worker) and yields each of its events, the chunks with their JPEG frames, and the end
with the mp4's bytes (sent back, so no state stays on the replica's node). A request the engine refuses, or an error
while it runs (an out-of-memory on a GPU), ends that stream with the engine's message; the replica stays up for the
next one. The session's steering is the stream registry: at each chunk boundary the replica asks it whether to stop
and takes the prompt switches queued for this stream, applies them (``HostStream.set_prompt``: the engine's one prompt
check) and answers each.

The replica reports itself to the registry (device, dtype, decoder, text encoder, world size and each rank's device)
when it starts and on every Serve health check, and says goodbye when Serve stops it cleanly, so ``/api/info`` lists
the replicas that exist.

With ``spec["ranks"]`` N > 1 (``--gpus-per-replica N``) the replica is rank 0 of an N-rank sequence-parallel group
(``rank_group``): it runs each stream on every rank and alone decodes and sends frames.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
from ray import serve

from ...checkpoint import CheckpointError
from ...host import EngineOptions, HostEngine, HostRequest, open_engine, tiny_demo
from ...runtime import StreamClosedError
from .. import protocol
from ..embeddings import EmbeddingsDir
from ..openai import jobs
from ..protocol import FINAL, Limits, PromptSwitchRequest
from ..session import Session, run
from .rank_group import RankGroup
from .registry import NAMESPACE
from .videos import ReplicaStore
from ...wording import JSON_FIELDS, in_terms


def open_host(spec: dict) -> HostEngine:
    """The engine a replica holds, from the CLI's model options (``model_dir`` None: the tiny demo model)."""
    if spec["model_dir"] is None:
        return tiny_demo(spec["device"] or "cpu", spec["attention"], 0, encoder=True)  # encoder: /v1's given frames
    return open_engine(EngineOptions(spec["model_dir"], spec["checkpoint"] or "", spec["dtype"], spec["device"] or "",
                                     spec["attention"], text_encoder=spec["text_encoder"], tae_path=spec.get("tae_path", "")))


def describe(host: HostEngine, devices: list[str] | None = None) -> dict:
    """What ``/api/info`` shows of a replica: the model as it runs there, on how many ranks and devices."""
    engine = host.engine
    devices = devices or [protocol.device_name(host)]
    return {"device": devices[0], "dtype": protocol.dtype_name(host), "decoder": engine.vae.name,
            "text_encoder": getattr(engine, "text_encoder", None) is not None, "world_size": len(devices),
            "devices": devices}


class RegistrySteering:
    """A session's steering over Ray: the registry holds what clients asked of the stream until this replica takes it."""

    def __init__(self, registry, stream_id: str, embeds: EmbeddingsDir):
        self.registry, self.stream_id, self.embeds = registry, stream_id, embeds

    def boundary(self, stream) -> bool:
        stop, switches = ray.get(self.registry.commands.remote(self.stream_id))
        if switches:
            self.registry.verdicts.remote(self.stream_id, [(sid, *self.apply(stream, change)) for sid, change in switches])
        return stop

    def apply(self, stream, change: dict) -> tuple[int, str | None]:
        """One switch on this replica's stream: (200, None), or the HTTP status and reason plain serve gives."""
        try:
            switch = PromptSwitchRequest(**change)
            stream.set_prompt(switch.prompt, self.embeds.path(switch.prompt_embeds), switch.recache)
        except StreamClosedError as exc:
            return 409, str(exc)
        except (ValueError, TypeError, CheckpointError) as exc:
            return 400, in_terms(exc, JSON_FIELDS)
        return 200, None


class EngineReplica:
    def __init__(self, spec: dict, registry: str):
        self.replica = serve.get_replica_context().replica_id.unique_id
        ranks = spec.get("ranks", 1)
        self.group = None if ranks == 1 else RankGroup(spec, ranks, spec["rank_resources"], spec["rank_timeout_s"],
                                                       f"histream-{self.replica}")
        self._host = open_host(spec) if self.group is None else None
        self.embeds = EmbeddingsDir(spec.get("embeds_dir"))  # the ingress's resolver, on this node's copy of the folder
        self.limits: Limits = spec.get("limits") or Limits()
        self.info = describe(self.host, None if self.group is None else self.group.devices)
        self.device = self.info["device"]
        self.registry = ray.get_actor(registry, namespace=NAMESPACE)
        self.registry.replica_seen.remote(self.replica, self.info)
        self._tmp = tempfile.TemporaryDirectory(prefix="histream-replica-")
        self.videos = ReplicaStore(spec["videos"]) if spec.get("videos") else None  # /v1's store

    @property
    def host(self) -> HostEngine:
        return self._host if self.group is None else self.group.host  # a rebuilt group has a new rank-0 engine

    def check_health(self) -> None:
        """Serve calls this every health-check period: the registry hears that this replica is alive. Raises only when
        its rank group could not be rebuilt after a lost rank (Serve then replaces the replica); never for the
        registry: the replica's health is its own."""
        if self.group is not None and self.group.unusable is not None:
            raise RuntimeError(self.group.unusable)
        try:
            self.registry.replica_seen.remote(self.replica, self.info)
        except Exception:  # noqa: BLE001
            pass

    def __del__(self) -> None:
        """Serve calls this when it stops the replica cleanly (scaled down, redeployed). Waits for the registry (at most
        2 s): the process ends right after, and a call still unsent would be lost with it."""
        try:
            if getattr(self, "group", None) is not None:
                self.group.shutdown()  # its placement group goes with the replica too; this is only sooner
            ray.get(self.registry.replica_down.remote(self.replica), timeout=2)
        except Exception:  # noqa: BLE001 - the registry may be gone first; the list ages the replica out then
            pass

    def _results(self, req: dict):
        if "v1" in req:  # a /v1 video: its own stream (a resumed state, given frames), on one rank
            if self.group is not None:
                raise ValueError("/v1 videos run on one-rank replicas; this replica is a sequence-parallel group")
            return jobs.open_video(self.host, req, self.videos, self.embeds)
        request = HostRequest(req["prompt"], self.embeds.path(req["prompt_embeds"]), req["frames"], req["height"],
                              req["width"], req["schedule"], req["seed"], live=req["live"])
        if self.group is not None:
            return self.group.stream(request)
        return self.host.results(request)

    def run(self, stream_id: str, req: dict):
        """``req``: ``protocol.plan``'s record. Yields {"event", "frames"}, the final one with "video" (the mp4's bytes)."""
        if ray.get(self.registry.cancelled.remote(stream_id)):  # cancelled while it waited in Ray's queue: no work
            yield {"event": protocol.final_event("cancelled", 0, 0.0)}
            return
        path = Path(self._tmp.name) / f"{stream_id}.mp4"
        finish = jobs.finisher(self.videos, req["video_id"], send_bytes=True) if "v1" in req else None
        session = Session(lambda: self._results(req), req, path, self.limits.max_record_seconds,
                          tags={"replica": self.replica, "device": self.device}, finish=finish)
        try:
            for event in run(session, RegistrySteering(self.registry, stream_id, self.embeds)):
                item = {"event": event.data, "frames": event.frames}
                if event.data["type"] in FINAL and path.is_file():
                    item["video"] = path.read_bytes()
                yield item
        finally:
            path.unlink(missing_ok=True)
