"""``histream serve --ray``: the page, JSON API and WebSocket protocol of ``app`` over Ray Serve (docs/ray-serve.md).

A FastAPI ingress deployment answers HTTP and WebSockets and keeps nothing: stream state lives in the named
``StreamRegistry`` actor, which drives each stream on the engine deployment (``ray_engine.EngineReplica``, one
engine a replica, at most one running stream a replica, Ray's bounded queue in front). Statuses also name the
replica (``"replica"``); ``/api/info`` lists the replicas with their device and state.
"""


import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from ..runtime.engine import EngineConfig, check_video_request
from ..runtime.schedules import SCHEDULES
from .app import STATIC, StreamRequest
from .jobs import Limits
from .ray_engine import EngineReplica
from .stream_registry import FINAL, NAME, NAMESPACE, StreamRegistry

APP_NAME, ENGINE = "histream", "EngineReplica"


@dataclass
class Scaling:
    replicas: int | None = 1  # None: autoscale between min and max
    min_replicas: int = 1
    max_replicas: int = 4
    cpus_per_replica: float = 1.0
    gpus_per_replica: int = 0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0

    def options(self, max_queue: int) -> dict:
        opts = {"max_ongoing_requests": 1, "max_queued_requests": max_queue,
                "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica}}
        if self.replicas is None:
            opts["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                          "target_ongoing_requests": 1, "upscale_delay_s": self.upscale_delay_s,
                                          "downscale_delay_s": self.downscale_delay_s, "metrics_interval_s": 0.5,
                                          "look_back_period_s": 1.0}
        else:
            opts["num_replicas"] = self.replicas
        return opts


def check_request(req: StreamRequest, limits: Limits, embeddings: list[str]) -> None:
    """The server's own limits, the same as ``app.create_app``'s (400 with the reason)."""
    if req.live or req.duration is not None:
        raise HTTPException(400, "live streams (\"live\": true) run on plain histream serve; the Ray replicas serve bounded "
                                 "streams for now (docs/ray-serve.md)")
    if req.frames > limits.max_frames:
        raise HTTPException(400, f"frames={req.frames} is over this server's limit of {limits.max_frames}")
    if max(req.height, req.width) > limits.max_side:
        raise HTTPException(400, f"{req.width}x{req.height} is over this server's limit of {limits.max_side} pixels a side")
    if req.schedule not in SCHEDULES:
        raise HTTPException(400, f"unknown schedule {req.schedule!r}; choose one of {sorted(SCHEDULES)}")
    if req.prompt_embeds and req.prompt_embeds not in embeddings:
        raise HTTPException(400, f"no embeddings file {req.prompt_embeds!r} on this server; it has {embeddings}")


api = FastAPI(title="histream serve --ray")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    def __init__(self, engine, description: str, limits: Limits, embeds_dir: str | None):
        self.engine, self.description, self.limits = engine, description, limits
        self.embeds_dir = Path(embeds_dir) if embeds_dir else None
        self.registry = ray.get_actor(NAME, namespace=NAMESPACE)

    def embeddings(self) -> list[str]:
        if self.embeds_dir is None:
            return []
        return sorted(p.name for p in self.embeds_dir.iterdir() if p.suffix in (".safetensors", ".pt", ".pth"))

    async def status_or_404(self, stream_id: str) -> dict:
        status = await self.registry.status.remote(stream_id)
        if status is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        return status

    @api.get("/", response_class=HTMLResponse)
    def page(self) -> str:
        return (STATIC / "index.html").read_text()

    @api.get("/api/info")
    async def info(self) -> dict:
        replicas = await self.registry.replica_info.remote()
        return {"model": self.description, "device": ", ".join(sorted({r["device"] for r in replicas})) or "starting",
                "schedules": sorted(SCHEDULES), "limits": vars(self.limits), "embeddings": self.embeddings(),
                "text_encoder": False, "fps": 16, "replicas": replicas}

    @api.post("/api/streams", status_code=201)
    async def start(self, req: StreamRequest) -> dict:
        check_request(req, self.limits, self.embeddings())
        try:  # the engine's shape checks, here, so a bad request waits for no replica (a replica checks the rest)
            check_video_request(req.frames, req.height, req.width, EngineConfig().chunk_size, SCHEDULES[req.schedule])
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        try:
            return await self.registry.start.remote(req.model_dump())
        except OverflowError as exc:
            raise HTTPException(429, str(exc).splitlines()[-1]) from exc

    @api.get("/api/streams/{stream_id}")
    async def status(self, stream_id: str) -> dict:
        return await self.status_or_404(stream_id)

    @api.delete("/api/streams/{stream_id}")
    async def cancel(self, stream_id: str) -> dict:
        await self.status_or_404(stream_id)
        await self.registry.cancel.remote(stream_id)
        return await self.status_or_404(stream_id)

    @api.get("/api/streams/{stream_id}/video.mp4")
    async def video(self, stream_id: str):
        status = await self.status_or_404(stream_id)
        data = await self.registry.video.remote(stream_id)
        if data is None:
            return JSONResponse({"detail": f"stream {stream_id} is {status['state']}: its video is ready once it is done "
                                           "or cancelled after at least one chunk"}, status_code=409)
        return Response(data, media_type="video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="histream-{stream_id}.mp4"'})

    @api.websocket("/api/streams/{stream_id}/ws")
    async def watch(self, ws: WebSocket, stream_id: str):
        await ws.accept()
        refused = await self.registry.watch.remote(stream_id)
        if refused is not None:
            await ws.send_json({"type": "failed", "error": refused})
            await ws.close(code=4404 if refused.startswith("no stream") else 4429)
            return

        async def listen():
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                try:
                    command = json.loads(msg.get("text") or "null")
                except ValueError:
                    continue  # only {"type": "cancel"} means anything
                if isinstance(command, dict) and command.get("type") == "cancel":
                    await self.registry.cancel.remote(stream_id)

        listener = asyncio.create_task(listen())
        try:
            seen = 0
            while not listener.done():
                events = await self.registry.events_since.remote(stream_id, seen)
                seen += len(events)
                for data, frames in events:
                    await ws.send_json(data)
                    for frame in frames:
                        await ws.send_bytes(frame)
                    if data["type"] in FINAL:
                        await ws.close()
                        return
        except (WebSocketDisconnect, RuntimeError):  # closed under us
            pass
        finally:
            listener.cancel()
            await self.registry.unwatch.remote(stream_id)


def deploy(spec: dict, description: str, limits: Limits, scaling: Scaling, embeds_dir: str | None = None,
           route_prefix: str = "/"):
    """Starts the registry, the engine deployment and the ingress on the connected Ray cluster. Returns the registry's
    handle, which the caller keeps: the registry lives as long as someone holds it."""
    most = scaling.replicas if scaling.replicas is not None else scaling.max_replicas
    registry = StreamRegistry.options(name=NAME, namespace=NAMESPACE, get_if_exists=True).remote(
        APP_NAME, ENGINE, max_waiting=limits.max_queue + most)
    engine = serve.deployment(EngineReplica, name=ENGINE).options(**scaling.options(limits.max_queue)).bind(
        {**spec, "embeds_dir": embeds_dir})
    serve.run(Ingress.bind(engine, description, limits, embeds_dir), name=APP_NAME, route_prefix=route_prefix)
    return registry


def scaling_from_args(args) -> Scaling:
    """The CLI's replica options; --gpus-per-replica other than 1 is refused until sequence parallelism lands."""
    if args.gpus_per_replica != 1:
        raise ValueError(f"--gpus-per-replica {args.gpus_per_replica} needs sequence parallelism inside a replica "
                         "(EngineConfig(parallel='ulysses')), which this build does not have yet; use 1")
    if args.replicas == "auto":
        if not 1 <= args.min_replicas <= args.max_replicas:
            raise ValueError(f"--min-replicas {args.min_replicas} and --max-replicas {args.max_replicas}: need 1 <= min <= max")
        replicas = None
    elif args.replicas.isdigit() and int(args.replicas) >= 1:
        replicas = int(args.replicas)
    else:
        raise ValueError(f"--replicas {args.replicas!r}: give a count >= 1 or 'auto'")
    return Scaling(replicas, args.min_replicas, args.max_replicas, cpus_per_replica=args.cpus_per_replica)


def serve_forever(args, spec: dict, description: str, limits: Limits) -> int:
    scaling = scaling_from_args(args)  # refusals first, before a cluster starts
    if args.ray_address:
        ray.init(address=args.ray_address, namespace=NAMESPACE)
    else:
        ray.init(namespace=NAMESPACE, include_dashboard=False)
    on_gpu = (args.device or "").startswith("cuda") or (args.device is None and ray.cluster_resources().get("GPU", 0) > 0)
    scaling.gpus_per_replica = 1 if on_gpu else 0
    serve.start(http_options={"host": args.host, "port": args.port})
    registry = deploy(spec, description, limits, scaling, str(args.embeds_dir) if args.embeds_dir else None)
    print(f"histream serve --ray: {description}\nopen http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        del registry
    return 0
