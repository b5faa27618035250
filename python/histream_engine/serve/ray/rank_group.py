"""One ``histream serve --ray`` replica on N ranks: a sequence-parallel group of Ray actors inside the replica's
placement group (``--gpus-per-replica N``, docs/ray-serve.md).

The Serve replica is rank 0. It starts N-1 ``RankActor``s in its placement group's other bundles (``STRICT_PACK``:
one node, so NCCL runs over NVLink), and all of them join one torch.distributed group (NCCL with each rank on its
GPU, gloo on CPUs) at a TCP address rank 0 picks on its node, with a finite timeout: a rank that never arrives is an
error, not a hang. Each rank opens the same engine with ``EngineConfig(parallel="ulysses")``.

Per stream (``RankGroup.stream``) rank 0 resolves the request (prompt to embeddings, schedule) and hands the very
same ``Engine.stream`` arguments to every other rank, which runs it and drops its chunks; rank 0 alone decodes and
returns frames. Prompt switches and closes go to every rank's stream, as the engine asks of SPMD callers.

A rank that dies mid-stream: gloo raises on rank 0 as soon as the peer's connection closes; NCCL would wait for its
timeout, so a watcher aborts the group as soon as Ray reports the rank's actor dead. Rank 0 then ends the attempt with
``RankLost`` naming the rank (a ``WorkerLost``: the registry resumes the stream from its last checkpoint), and the
group is rebuilt (fresh actors, a fresh process group, rank 0's weights kept) before the next stream or resume, so the
lost stream and the streams waiting for this replica still run. A rebuild that fails makes the replica unhealthy
(``EngineReplica.check_health``), and Serve replaces it.

A group's checkpoint is rank 0's stream state without rings: every rank holds the same latents, noise generator and
prompt (only the rings are split by heads), and only rank 0 decodes. ``RankGroup.resume`` hands it to every rank, and
each resumes it (``Engine.resume``, which the ranks agree on first).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import socket
import threading
import time
import uuid

import ray
import torch

from ...host import (
    EngineOptions,
    HostEngine,
    HostRequest,
    HostStream,
    open_engine,
    tiny_demo,
)
from ...runtime.stream_state import StreamState, stream_state_from_bytes
from ..protocol import device_name
from ..session import WorkerLost
from .registry import NAMESPACE, replica_lost

SETTLE_S = 10.0  # how long rank 0 waits, after its stream ended, for the other ranks' streams to end with it
PING_S = 10.0  # how long rank 0 waits for the other ranks to answer before it hands them a stream


class RankLost(WorkerLost):
    """A rank of this replica's group died (its actor was killed, its node lost) or failed alone; the group is rebuilt
    and the stream resumed from its last checkpoint."""


def join_group(address: str, rank: int, world: int, backend: str, timeout_s: float) -> None:
    """This process joins the group as ``rank`` (the default group: each rank is its own Ray worker process)."""
    import torch.distributed as dist

    if dist.is_initialized():  # a rebuild: the broken group goes first
        dist.destroy_process_group()
    if backend == "nccl":
        torch.cuda.set_device(0)  # Ray shows each rank only the GPU of its bundle
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def rank_device(backend: str) -> str:
    return f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu"


def open_rank_host(spec: dict, backend: str) -> HostEngine:
    """This rank's engine on its group, from the CLI's model options (``model_dir`` None: the tiny demo model)."""
    import torch.distributed as dist

    device, group = rank_device(backend), dist.group.WORLD
    if spec["model_dir"] is None:
        return tiny_demo(device, spec["attention"], 0, parallel_group=group)
    options = EngineOptions(spec["model_dir"], spec["checkpoint"] or "", spec["dtype"], device, spec["attention"],
                            text_encoder=spec["text_encoder"], tae_path=spec.get("tae_path", ""))
    return open_engine(options, parallel_group=group)


class RankActor:
    """Ranks 1..N-1 of a replica: one engine each, running the streams rank 0 hands over. Threaded (Ray's
    ``max_concurrency``), so a prompt switch or a close reaches a stream while it runs. Each stream has rank 0's key:
    a switch or close that overtakes its stream's start waits for it, and never lands on an earlier stream."""

    def __init__(self):
        self.host, self.backend = None, None
        self.streams: dict = {}  # key -> VideoStream, while it runs
        self.ended: collections.deque = collections.deque(maxlen=64)  # keys of the last streams that ended (or never opened)
        self._changed = threading.Condition()

    def ready(self) -> bool:
        return True

    def join(self, address: str, rank: int, world: int, backend: str, timeout_s: float) -> None:
        join_group(address, rank, world, backend, timeout_s)
        self.backend = backend

    def open(self, spec: dict) -> str:
        # only rank 0 turns prompts into embeddings: the other ranks need no text encoder (UMT5 is 11 GB)
        self.host = open_rank_host({**spec, "text_encoder": False}, self.backend)
        return device_name(self.host)

    def run_stream(self, key: str, embeds: torch.Tensor, num_frames, height: int, width: int, schedule, seed: int) -> int:
        engine = self.host.engine
        return self._run(key, lambda: engine.stream(embeds.to(engine.dit.device), num_frames, height, width,
                                                     schedule=schedule, seed=seed))

    def resume_stream(self, key: str, state: bytes, embeds: torch.Tensor | None) -> int:
        """Rank 0's checkpoint (``StreamState.to_bytes``), resumed here; ``embeds``: a prompt switch landing at the seam."""
        engine = self.host.engine
        embeds = None if embeds is None else embeds.to(engine.dit.device)
        return self._run(key, lambda: engine.resume(stream_state_from_bytes(state), embeds))

    def _run(self, key: str, open_stream) -> int:
        stream = None
        try:
            stream = open_stream()
            with self._changed:
                self.streams[key] = stream
                self._changed.notify_all()
            return sum(1 for _ in stream)  # the same latents as rank 0's; only rank 0 decodes and sends frames
        finally:
            if stream is not None:
                stream.close()
            with self._changed:
                self.streams.pop(key, None)
                self.ended.append(key)
                self._changed.notify_all()

    def _stream(self, key: str, timeout_s: float = 60.0):
        with self._changed:
            self._changed.wait_for(lambda: key in self.streams or key in self.ended, timeout_s)
            return self.streams.get(key)

    def set_prompt(self, key: str, embeds: torch.Tensor, recache: bool) -> None:
        if (stream := self._stream(key)) is not None:
            stream.set_prompt(embeds.to(self.host.engine.dit.device), recache=recache)

    def close(self, key: str) -> None:
        if (stream := self._stream(key)) is not None:
            stream.close()


@dataclasses.dataclass(frozen=True)
class RankEnd:
    """How one rank's stream call ended: returned (``error`` None), raised (``error``), or its actor died."""

    rank: int
    error: BaseException | None
    died: bool

    @property
    def key(self) -> str | None:
        """What must match rank 0's own ending for the group to stay in step: the error's words (the engine raises the
        same words on every rank for what the ranks agree on: refusals, NaN latents; the class may differ, as a rank
        raises a built-in one for another rank's refusal)."""
        return None if self.error is None else str(self.error)


def rank_end(rank: int, ref) -> RankEnd:
    """The ending of a finished stream call (``ray.wait`` said it is ready)."""
    try:
        ray.get(ref, timeout=0)
    except Exception as exc:  # noqa: BLE001 - sorted here: an actor that died, or the rank's own error
        if replica_lost(exc):
            return RankEnd(rank, exc, True)
        return RankEnd(rank, getattr(exc, "cause", None) or exc, False)  # RayTaskError wraps what the rank raised
    return RankEnd(rank, None, False)


def free_address() -> str:
    """A TCP address on this node for the group's rendezvous (rank 0's node: the group is packed on it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"tcp://{ray.util.get_node_ip_address()}:{port}"


class RankGroup:
    """Rank 0's side of a replica's group: the other ranks' actors, this rank's engine (``host``), one stream at a time."""

    def __init__(self, spec: dict, world: int, resources: dict, timeout_s: float, name: str):
        self.spec, self.world, self.resources, self.timeout_s, self.name = spec, world, resources, timeout_s, name
        self.backend = "nccl" if resources.get("num_gpus") else "gloo"
        self.placement = ray.util.get_current_placement_group()
        if self.placement is None:
            raise RuntimeError(f"a replica of {world} ranks runs in a placement group of {world} bundles "
                               "(deploy with deploy.Scaling(ranks=...), which declares it)")
        self.host: HostEngine | None = None
        self.actors: list = []
        self.devices: list[str] = []
        self.broken: str | None = None  # why the group must be rebuilt before the next stream
        self.unusable: str | None = None  # why a rebuild failed: the replica is unhealthy
        self.generation = 0
        self._form()

    def _form(self) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.generation += 1
        actor = ray.remote(RankActor)
        self.actors = [actor.options(name=f"{self.name}-rank{r}-{self.generation}", namespace=NAMESPACE,
                                     max_concurrency=4, **self.resources,
                                     scheduling_strategy=PlacementGroupSchedulingStrategy(
                                         placement_group=self.placement, placement_group_bundle_index=r)).remote()
                       for r in range(1, self.world)]
        # every process up (imports done) before anyone waits in the rendezvous, whose timeout is then only theirs
        ray.get([a.ready.remote() for a in self.actors], timeout=self.timeout_s)
        address = free_address()
        joins = [a.join.remote(address, r, self.world, self.backend, self.timeout_s) for r, a in enumerate(self.actors, 1)]
        join_group(address, 0, self.world, self.backend, self.timeout_s)
        ray.get(joins, timeout=self.timeout_s)
        # the engine setups are one collective (the ranks compare models and settings): all ranks at once
        opens = [a.open.remote(self.spec) for a in self.actors]
        self.host = self._open_here()
        self.devices = [device_name(self.host)] + ray.get(opens, timeout=self.timeout_s)
        self.broken = None

    def _open_here(self) -> HostEngine:
        import torch.distributed as dist

        if self.host is None:
            return open_rank_host(self.spec, self.backend)
        # a rebuild keeps rank 0's weights, decoder and text encoder: only the group is new
        old = self.host.engine
        engine = type(old)(old.dit, dataclasses.replace(old.config, group=dist.group.WORLD), vae=old.vae)
        engine.text_encoder = old.text_encoder
        return HostEngine(engine, self.host.default_prompt)

    def rebuild(self) -> None:
        """A fresh group after a lost rank: the old actors go (the survivors are stuck in the broken group). If that
        fails, the replica is ``unusable`` and its health check says so."""
        for a in self.actors:
            ray.kill(a, no_restart=True)
        try:
            self._form()
        except Exception as exc:
            self.unusable = f"rebuilding this replica's {self.world}-rank group after {self.broken} failed: {type(exc).__name__}: {exc}"
            raise RuntimeError(self.unusable) from exc
        self.unusable = None

    def shutdown(self) -> None:
        import torch.distributed as dist

        for a in self.actors:
            ray.kill(a, no_restart=True)
        if dist.is_initialized():
            dist.destroy_process_group()

    def stream(self, request: HostRequest) -> "GroupStream":
        """As ``HostEngine.results``, on every rank. What only rank 0 can check (the prompt, its text encoder) is
        checked before any other rank is asked; the engine's own checks run on every rank and agree."""
        self._make_whole()
        embeds, *args = self.host.stream_args(request)
        key = uuid.uuid4().hex
        refs = [a.run_stream.remote(key, embeds.cpu(), *args, request.seed) for a in self.actors]
        return GroupStream(self, key, refs,
                           lambda: HostStream(self.host, self.host.engine.stream(embeds, *args, seed=request.seed)))

    def resume(self, state: bytes, prompt: str = "", prompt_embeds_path: str = "") -> "GroupStream":
        """As ``HostEngine.resume_state``, on every rank: ``state`` (a checkpoint's bytes, taken on this group before it
        lost a rank, or on another replica's) goes to each rank. A new prompt (a switch that had not landed) is resolved
        here and lands at the seam on every rank."""
        self._make_whole()
        parsed: StreamState = stream_state_from_bytes(state)  # checked here first: bytes that are no state reach no rank
        embeds = self.host._prompt(prompt, prompt_embeds_path) if (prompt or prompt_embeds_path) else None
        key = uuid.uuid4().hex
        shared = ray.put(state)
        refs = [a.resume_stream.remote(key, shared, None if embeds is None else embeds.cpu()) for a in self.actors]
        return GroupStream(self, key, refs, lambda: HostStream(self.host, self.host.engine.resume(parsed, embeds)))

    def _make_whole(self) -> None:
        """Before a stream: a rank found dead now fails no stream (``PING_S``); a broken group is rebuilt."""
        if self.broken is None and (lost := self.lost_rank([a.ready.remote() for a in self.actors], PING_S)) is not None:
            self.broken = f"rank {lost.rank} lost between streams"
        if self.broken is not None:
            self.rebuild()

    def ends(self, refs: list, wait_s: float | None):
        """Each stream call's ``RankEnd`` (ranks 1..N-1) as it finishes, for up to ``wait_s`` seconds (None: until all
        have)."""
        pending = list(refs)
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not ready:
                return
            yield rank_end(refs.index(ready[0]) + 1, ready[0])

    def lost_rank(self, refs: list, wait_s: float | None) -> RankEnd | None:
        """The first rank whose call ended because its actor died, looking up to ``wait_s`` seconds."""
        return next((end for end in self.ends(refs, wait_s) if end.died), None)

    def break_up(self, why: str) -> None:
        """Make rank 0's pending collective fail now, not at the timeout: the other ranks' processes go (gloo raises as
        their connections close) and the group is aborted (NCCL). It is rebuilt before the next stream."""
        self.broken = self.broken or why
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.abort()

    def abort(self) -> None:
        """Fail the collective rank 0 waits in (NCCL waits for its timeout; gloo has already raised)."""
        import torch.distributed as dist

        try:
            dist.group.WORLD.abort()
        except Exception:  # noqa: BLE001 - a backend without abort: its collective ends at the timeout
            pass


class GroupStream:
    """Rank 0's stream on the group: iterates (ChunkResult, frames) as ``HostStream`` does, and steers every rank.

    The group is used again only if every rank ended the stream the way rank 0 did (all ran to the end or stopped at
    the same boundary, or all raised the same agreed error); otherwise it is rebuilt before the next stream. A rank
    whose actor dies, or which raises while rank 0 goes on (an out-of-memory on its GPU alone), would leave rank 0 in
    a collective until the timeout: a watcher breaks the group up at once, and the stream fails naming that rank."""

    def __init__(self, group: RankGroup, key: str, refs: list, open_local):
        self.group, self.key, self.refs = group, key, refs
        self.cause: tuple[str, RankEnd] | None = None  # ("was lost" | "failed alone", the rank's end) that broke the group
        self.outcome: str | None = None  # rank 0's own error, as RankEnd.key
        self._ended = threading.Event()  # rank 0's stream has ended (or was closed)
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="histream-rank-watcher")
        self._watcher.start()
        try:
            self.local = self._guarded(open_local)
        except BaseException:
            self.close()
            raise

    def _watch(self) -> None:
        for end in self.group.ends(self.refs, wait_s=None):
            if self._ended.is_set():
                return  # rank 0 is out of its collectives: close() sorts out the rest
            if end.died:
                self.cause = ("was lost", end)
            elif end.error is not None and not self._ended.wait(SETTLE_S):
                self.cause = ("failed alone", end)  # the others raise the same within moments when they agree
            else:
                continue
            self.group.break_up(f"rank {end.rank} {self.cause[0]}")
            return

    def _guarded(self, step):
        try:
            return step()
        except StopIteration:
            self._ended.set()
            raise
        except Exception as exc:
            self._ended.set()
            self.outcome = str(exc)
            if self.cause is None and (end := self.group.lost_rank(self.refs, wait_s=2.0)) is not None:
                self.cause = ("was lost", end)  # gloo raised before Ray reported the actor dead
                self.group.broken = f"rank {end.rank} was lost"
            if self.cause is None or self.cause[1].key == self.outcome:
                raise  # rank 0's own error (a rank that raised the same was not alone)
            how, end = self.cause
            raise RankLost(f"rank {end.rank} of this replica's {self.group.world} ranks {how} mid-stream "
                           f"({type(end.error).__name__}: {end.error}); the replica rebuilds its group") from exc

    def __iter__(self):
        return self

    def __next__(self):
        return self._guarded(lambda: next(self.local))

    def state(self, include_cache: bool = False) -> StreamState:
        """Rank 0's state at the boundary (every rank's is the same without the rings, which a group cannot give):
        ``RankGroup.resume`` goes on from it on every rank."""
        return self.local.chunks.state(include_cache)

    def set_prompt(self, prompt: str, prompt_embeds_path: str, recache: bool = True) -> None:
        """A prompt switch on every rank; returns once each has queued it. It lands at the first chunk boundary where
        all of them have it: the next one, or the one after when the other ranks were already waiting at the next
        (they do not decode, so they usually are), one chunk later than on one process."""
        if not prompt and not prompt_embeds_path:
            raise ValueError("a prompt switch needs a prompt or prompt embeddings")
        embeds = self.group.host._prompt(prompt, prompt_embeds_path)
        self.local.chunks.set_prompt(embeds, recache=recache)  # checked here first: a bad switch reaches no other rank
        ray.get([a.set_prompt.remote(self.key, embeds.cpu(), recache) for a in self.group.actors], timeout=self.group.timeout_s)

    def close(self) -> None:
        """Ends the stream on every rank. Rank 0's close takes part in the next boundary's exchange, so the others stop
        there; they are closed too. A rank that does not end soon after, or ends otherwise than rank 0 (rank 0 failed
        alone: the others wait in a collective), gets the group rebuilt before the next stream."""
        self._ended.set()
        local = getattr(self, "local", None)
        if local is not None:
            local.close()
        for a in self.group.actors:
            a.close.remote(self.key)
        if self.group.broken is not None:
            return
        ends = list(self.group.ends(self.refs, SETTLE_S))
        if len(ends) < len(self.refs):
            self.group.broken = f"ranks still in a stream {SETTLE_S:g} s after rank 0 ended it"
        elif (odd := next((end for end in ends if end.key != self.outcome), None)) is not None:
            self.group.broken = f"rank {odd.rank} ended the stream otherwise than rank 0"
