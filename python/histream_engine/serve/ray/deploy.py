"""``histream serve --ray``: deploying the three parts on a Ray cluster (docs/ray-serve.md), and the CLI's options.

The parts: the ingress (``ingress.Ingress``: plain serve's app over the registry), the stream registry (one named
actor, ``registry.StreamRegistry``), and the engine deployment (``replica.EngineReplica``: one engine a replica, at
most one running stream a replica, Ray's bounded queue in front; with ``--gpus-per-replica N`` a replica is an N-rank
group, ``rank_group``). ``Scaling`` is how many replicas, on what; the replica and grace options are checked before a
cluster starts.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from ...checkpoint import CheckpointError, read_config
from ...config import WanConfig
from ...model_dir import find_model_files
from ...runtime.parallel.ulysses import divisors
from ..embeddings import EmbeddingsDir
from ..openai.options import VideoOptions
from ..protocol import Limits
from ..resilience import Resilience
from . import scratch
from .ingress import Ingress
from .registry import NAMESPACE, StreamRegistry, Watching, registry_name
from .replica import EngineReplica
from .videos import start_store

APP_NAME, ENGINE = "histream", "EngineReplica"
_stores: dict = {}  # APP_NAME -> its /v1 store actor's handle, held by the deploying process


@dataclass
class Scaling:
    replicas: int | None = 1  # None: autoscale between min and max
    min_replicas: int = 1
    max_replicas: int = 4
    cpus_per_replica: float = 1.0  # with ranks > 1: each rank's
    gpus_per_rank: int = 0  # 1 on a GPU cluster; 0 on CPUs
    ranks: int = 1  # --gpus-per-replica: one sequence-parallel group of this many ranks a replica (rank_group)
    rank_timeout_s: float = 300.0  # the group's rendezvous and collectives: a rank that never answers is an error then
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    metrics_interval_s: float = 0.5
    look_back_period_s: float = 1.0
    health_check_period_s: float = 5.0  # each check also tells the registry the replica is alive
    graceful_shutdown_timeout_s: float = 20.0  # a replica being scaled down waits this long for its running stream
    graceful_shutdown_wait_loop_s: float = 2.0  # and looks this often whether it has ended

    @property
    def most(self) -> int:
        return self.replicas if self.replicas is not None else self.max_replicas

    def replica_ttl_s(self) -> float:
        """How long a replica may go unheard before /api/info drops it: three missed health checks."""
        return 3 * self.health_check_period_s + 1.0

    def rank_resources(self) -> dict:
        return {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_rank}

    def bundle(self) -> dict:
        """One rank's placement-group bundle."""
        bundle = {"CPU": self.cpus_per_replica, "GPU": self.gpus_per_rank}
        return {k: v for k, v in bundle.items() if v}

    def options(self, max_waiting: int) -> dict:
        # Ray's queue is bounded by the registry's own count of waiting streams (which it answers with 429), so Ray
        # never refuses a stream the registry accepted
        opts = {"max_ongoing_requests": 1, "max_queued_requests": max_waiting,
                "health_check_period_s": self.health_check_period_s,
                "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
                "graceful_shutdown_wait_loop_s": self.graceful_shutdown_wait_loop_s,
                "ray_actor_options": self.rank_resources()}
        if self.ranks > 1:
            if not self.bundle():
                raise ValueError(f"--gpus-per-replica {self.ranks} on CPUs places {self.ranks} ranks in bundles of "
                                 "--cpus-per-replica CPUs each, and a bundle cannot be empty: give --cpus-per-replica > 0")
            # the replica (rank 0) takes bundle 0 and starts the other ranks in the rest; STRICT_PACK keeps them on one
            # node, so the per-layer all-to-alls run over NVLink, not the network
            opts["placement_group_bundles"] = [self.bundle() for _ in range(self.ranks)]
            opts["placement_group_strategy"] = "STRICT_PACK"
        if self.replicas is None:
            opts["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                          "target_ongoing_requests": 1, "upscale_delay_s": self.upscale_delay_s,
                                          "downscale_delay_s": self.downscale_delay_s,
                                          "metrics_interval_s": self.metrics_interval_s,
                                          "look_back_period_s": self.look_back_period_s}
        else:
            opts["num_replicas"] = self.replicas
        return opts


def deploy(spec: dict, description: str, limits: Limits, scaling: Scaling, embeds_dir: str | None = None,
           route_prefix: str = "/", watching: Watching | None = None, videos: VideoOptions | None = None,
           key_digest: bytes | None = None, resilience: Resilience | None = None):
    """Starts the registry, /v1's video store (``videos``: default, in a temporary folder), the engine deployment and
    the ingress on the connected Ray cluster; ``key_digest``: every route needs that API key. Returns the registry's
    handle, which the caller keeps: the registry lives as long as someone holds it (the store as long as this process
    or the next deploy). The deployment's temporary folder (``scratch``) is made here; whoever stops the server removes
    it (``scratch.remove(ray.get(registry.scratch_folder.remote()))``), or the next deployment on this machine does."""
    EmbeddingsDir(embeds_dir)  # a missing folder is refused here, not by an ingress that fails to start
    watching, videos = watching or Watching(), videos or VideoOptions()
    max_waiting = limits.max_queue + scaling.most  # a burst's streams count as waiting until their replica starts them
    name = registry_name()
    folder = str(scratch.server_folder(name))
    registry = StreamRegistry.options(name=name, namespace=NAMESPACE).remote(
        APP_NAME, ENGINE, max_waiting, watching, scaling.replica_ttl_s(), limits=limits, resilience=resilience,
        scratch=folder, videos=f"{name}-videos")
    _stores[APP_NAME] = start_store(videos, f"{name}-videos")  # the previous deployment's store goes with its handle
    engine = serve.deployment(EngineReplica, name=ENGINE).options(**scaling.options(max_waiting)).bind(
        {**spec, "embeds_dir": embeds_dir, "limits": limits, "ranks": scaling.ranks, "videos": f"{name}-videos",
         "scratch": folder,
         "rank_resources": scaling.rank_resources(), "rank_timeout_s": scaling.rank_timeout_s}, name)
    ingress = Ingress.bind(engine, description, limits, embeds_dir, name, watching, (videos, f"{name}-videos", key_digest))
    serve.run(ingress, name=APP_NAME, route_prefix=route_prefix)
    return registry


def scaling_from_args(args) -> Scaling:
    """The CLI's replica options, checked before a cluster starts."""
    if args.gpus_per_replica < 1:
        raise ValueError(f"--gpus-per-replica {args.gpus_per_replica}: give 1, or N > 1 for one N-rank sequence-parallel "
                         "group a replica")
    if args.replicas == "auto":
        if not 1 <= args.min_replicas <= args.max_replicas:
            raise ValueError(f"--min-replicas {args.min_replicas} and --max-replicas {args.max_replicas}: need 1 <= min <= max")
        replicas = None
    elif args.replicas.isdigit() and int(args.replicas) >= 1:
        replicas = int(args.replicas)
    else:
        raise ValueError(f"--replicas {args.replicas!r}: give a count >= 1 or 'auto'")
    return Scaling(replicas, args.min_replicas, args.max_replicas, cpus_per_replica=args.cpus_per_replica,
                   ranks=args.gpus_per_replica)


def check_ranks(ranks: int, spec: dict) -> None:
    """What --gpus-per-replica N needs of the model and device, where it can be known before deploying: the heads
    are dealt out to the ranks (the engine refuses the rest on every replica, with the same words)."""
    if ranks == 1:
        return
    device = spec.get("device") or ""
    if device.startswith("cuda:"):
        raise ValueError(f"--device {device} with --gpus-per-replica {ranks}: each rank runs on the GPU Ray gives it; "
                         "give --device cuda (or leave it out)")
    heads = model_heads(spec)
    if heads is not None and heads % ranks:
        raise ValueError(f"--gpus-per-replica {ranks}: sequence parallelism deals the model's {heads} attention heads out "
                         f"to the ranks, and {heads} is not divisible by {ranks}: use one of {divisors(heads)}")


def model_heads(spec: dict) -> int | None:
    """The DiT's attention heads from its config alone (no weights read), or None where the folder does not say."""
    if spec["model_dir"] is None:
        return WanConfig.from_name("tiny").num_heads  # the demo model
    try:
        files = find_model_files(spec["model_dir"], need=())
        config = read_config(files.dit) if files.dit is not None else None
    except CheckpointError:
        return None  # a folder the replicas will refuse with the loader's own message
    return None if config is None else config.num_heads


def check_cluster_fits(scaling: Scaling, nodes: list[dict]) -> None:
    """A replica of N ranks is packed on one node (STRICT_PACK): refuse a cluster none of whose ``nodes`` (each
    node's total resources, as ``ray.nodes()`` lists them) can hold one, instead of a deployment that waits forever."""
    if scaling.ranks == 1:
        return
    need = {k: v * scaling.ranks for k, v in scaling.bundle().items()}
    if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
        return
    has = "; ".join(", ".join(f"{node.get(k, 0):g} {k}" for k in need) for node in nodes) or "no nodes"
    raise ValueError(f"--gpus-per-replica {scaling.ranks} packs a replica's {scaling.ranks} ranks on one node (STRICT_PACK), "
                     f"{' and '.join(f'{v:g} {k}' for k, v in need.items())} in all, and no node of this Ray cluster has "
                     f"that (its nodes: {has}): lower --gpus-per-replica (or --cpus-per-replica), or add a larger node")


def watching_from_args(args) -> Watching:
    if not 0 <= args.reconnect_grace_seconds <= 3600:
        raise ValueError(f"--reconnect-grace-seconds {args.reconnect_grace_seconds:g}: give 0 to 3600 seconds")
    return Watching(grace_s=args.reconnect_grace_seconds)


def served_apps() -> set[str]:
    try:
        return set(serve.status().applications)
    except RayServeException:  # no Serve on this cluster yet
        return set()


def listening(asked_host: str, asked_port: int) -> str:
    """Where the cluster's Serve proxy listens: a joined cluster whose Serve already runs keeps its own address."""
    try:
        from ray.serve.context import _get_global_client  # not public; the asked address is the fallback

        http = _get_global_client().http_config
        return f"http://{http.host}:{http.port}/"
    except Exception:  # noqa: BLE001
        return f"http://{asked_host}:{asked_port}/"


def free_port(host: str) -> int:
    """--port 0 over Ray: a port free now, for Serve's proxy, which takes a fixed one."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_forever(args, spec: dict, description: str, limits: Limits, videos: VideoOptions | None = None,
                  key_digest: bytes | None = None, resilience: Resilience | None = None) -> int:
    scaling, watching = scaling_from_args(args), watching_from_args(args)  # refusals first, before a cluster starts
    check_ranks(scaling.ranks, spec)
    EmbeddingsDir(args.embeds_dir)
    joined = bool(args.ray_address)
    if joined:
        ray.init(address=args.ray_address, namespace=NAMESPACE)
        if APP_NAME in served_apps():
            ray.shutdown()
            raise ValueError(f"the Ray cluster at {args.ray_address} already serves an application named {APP_NAME!r} "
                             "(another histream serve --ray?): stop that one first")
    else:
        ray.init(namespace=NAMESPACE, include_dashboard=False)
    on_gpu = (args.device or "").startswith("cuda") or (args.device is None and ray.cluster_resources().get("GPU", 0) > 0)
    scaling.gpus_per_rank = 1 if on_gpu else 0
    try:
        check_cluster_fits(scaling, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    except ValueError:
        ray.shutdown()
        raise
    # SIGTERM (docker stop, systemd) stops the server as Ctrl-C does, so the application leaves the cluster
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    registry, folder = None, None
    try:
        serve.start(http_options={"host": args.host, "port": args.port or free_port(args.host)})
        registry = deploy(spec, description, limits, scaling, str(args.embeds_dir) if args.embeds_dir else None,
                          watching=watching, videos=videos, key_digest=key_digest, resilience=resilience)
        folder = Path(ray.get(registry.scratch_folder.remote()))
        print(f"histream serve --ray: {description}\nopen {listening(args.host, args.port)} (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):  # whatever stopped the server is what to report, not the cleanup
            # a joined cluster keeps its Serve for others; a local one goes with this process
            serve.delete(APP_NAME) if joined else serve.shutdown()
        del registry
        ray.shutdown()
        scratch.remove(folder)  # the replicas' scratch folders, killed ones' included, and the kept segments
    print("histream serve --ray: stopped", flush=True)
    return 0
