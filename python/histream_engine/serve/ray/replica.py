"""The engine deployment of ``histream serve --ray``: each replica holds one engine and runs one stream at a time.

``run`` is a streaming method (the caller uses ``handle.options(stream=True)``): it runs the stream as a ``session``
(the same loop as plain serve's worker) and yields each of its events, the chunks with their JPEG frames, their mp4
segment's bytes and the stream's checkpoint (``resilience``), all sent back to the registry, so nothing a stream needs
stays only on the replica: when the replica dies, the registry goes on from the checkpoint on another (``run`` with a
``Resume``). A request the engine refuses, or an error
while it runs (an out-of-memory on a GPU), ends that stream with the engine's message; the replica stays up for the
next one. The session's steering is the stream registry: at each chunk boundary the replica asks it whether to stop
and takes the prompt switches queued for this stream, applies them (``HostStream.set_prompt``: the engine's one prompt
check) and answers each.

The replica reports itself to the registry (device, dtype, decoder, text encoder, world size and each rank's device)
when it starts and on every Serve health check, and says goodbye when Serve stops it cleanly, so ``/api/info`` lists
the replicas that exist.

With ``spec["ranks"]`` N > 1 (``--gpus-per-replica N``) the replica is rank 0 of an N-rank sequence-parallel group
(``rank_group``): it runs each stream on every rank and alone decodes and sends frames. A stream whose group lost a
rank ends its attempt with ``RankLost``, and the registry resumes it from its last checkpoint on the rebuilt group.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import ray
from ray import serve

from ...checkpoint import CheckpointError
from ...host import EngineOptions, HostEngine, HostRequest, open_engine, tiny_demo
from ...runtime import StreamClosedError
from ...runtime.stream_state import stream_state_from_bytes
from .. import protocol
from ..embeddings import EmbeddingsDir
from ..openai import jobs
from ..protocol import Limits, PromptSwitchRequest
from ..resilience import Resume
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
        # under the deployment's folder, which the server removes when it stops: a killed replica never cleans its own
        self._tmp = tempfile.TemporaryDirectory(prefix="histream-replica-", dir=spec.get("scratch"))
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

    def _results(self, req: dict, resume: Resume | None):
        """The stream: fresh (the newest accepted switch landing at its first boundary, after a lost attempt that
        published nothing), or going on from ``resume``'s checkpoint (that switch landing at the seam). A /v1 video's
        fresh stream is its own (a resumed state, given frames), on one rank."""
        switch = None if resume is None else resume.switch
        prompt, path = ("", "") if switch is None else (switch["prompt"], self.embeds.path(switch["prompt_embeds"]))
        if resume is not None and resume.checkpoint is not None:
            if self.group is not None:
                return self.group.resume(resume.checkpoint.state, prompt, path)
            return self.host.resume_state(stream_state_from_bytes(resume.checkpoint.state), prompt, path)
        if "v1" in req:
            if self.group is not None:
                raise ValueError("/v1 videos run on one-rank replicas; this replica is a sequence-parallel group")
            return jobs.open_video(self.host, req, self.videos, self.embeds)
        request = HostRequest(req["prompt"], self.embeds.path(req["prompt_embeds"]), req["frames"], req["height"],
                              req["width"], req["schedule"], req["seed"], live=req["live"])
        stream = self.group.stream(request) if self.group is not None else self.host.results(request)
        if switch is not None:
            stream.set_prompt(prompt, path, switch["recache"])
        return stream

    def run(self, stream_id: str, req: dict, resume: Resume | None = None):
        """``req``: ``protocol.plan``'s record; ``resume``: going on after a lost attempt. Yields {"event", "frames"},
        a chunk's with "segment" (its mp4's bytes) and "checkpoint" or "no_checkpoint", a final one with "retry"."""
        if ray.get(self.registry.cancelled.remote(stream_id)):  # cancelled while it waited in Ray's queue: no work
            yield {"event": protocol.final_event("cancelled", 0 if resume is None else resume.chunk, 0.0)}
            return
        scratch = Path(self._tmp.name) / stream_id
        scratch.mkdir(exist_ok=True)
        session = Session(lambda: self._results(req, resume), req, scratch,
                          tags={"replica": self.replica, "device": self.device}, resume=resume)
        try:
            for event in run(session, RegistrySteering(self.registry, stream_id, self.embeds)):
                item = {"event": event.data, "frames": event.frames, "checkpoint": event.checkpoint,
                        "no_checkpoint": event.no_checkpoint, "retry": event.retry}
                if event.segment is not None:
                    item["segment"] = event.segment.read_bytes()
                    event.segment.unlink()
                yield item
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
