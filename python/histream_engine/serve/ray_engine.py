"""The engine deployment of ``histream serve --ray``: each replica holds one engine and runs one stream at a time.

``run`` is a streaming method (the caller uses ``handle.options(stream=True)``): it yields the replica's name, then
each chunk with its JPEG frames, then the end with the mp4's bytes (sent back, so no state stays on the replica's
node). A request the engine refuses, or an error while it runs (an out-of-memory on a GPU), ends that stream with
the engine's message; the replica stays up for the next one. A cancel is read from the stream registry before the
stream starts and after each chunk.

The replica reports itself to the registry (device, dtype, decoder, text encoder, world size and each rank's device)
when it starts and on every Serve health check, and says goodbye when Serve stops it cleanly, so ``/api/info`` lists
the replicas that exist.

With ``spec["ranks"]`` N > 1 (``--gpus-per-replica N``) the replica is rank 0 of an N-rank sequence-parallel group
(``rank_group``): it runs each stream on every rank and alone decodes and sends frames.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import serve

from ..host import EngineOptions, HostEngine, HostRequest, open_engine, tiny_demo
from ..video import FPS, Mp4Writer
from .jobs import encode_jpeg
from .rank_group import RankGroup, device_name
from .stream_registry import NAMESPACE


def open_host(spec: dict) -> HostEngine:
    """The engine a replica holds, from the CLI's model options (``model_dir`` None: the tiny demo model)."""
    if spec["model_dir"] is None:
        return tiny_demo(spec["device"] or "cpu", spec["attention"], 0)
    return open_engine(EngineOptions(spec["model_dir"], spec["checkpoint"] or "", spec["dtype"], spec["device"] or "",
                                     spec["attention"], text_encoder=spec["text_encoder"], tae_path=spec.get("tae_path", "")))


def describe(host: HostEngine, devices: list[str] | None = None) -> dict:
    """What ``/api/info`` shows of a replica: the model as it runs there, on how many ranks and devices."""
    engine = host.engine
    dit = engine.dit
    devices = devices or [device_name(host)]
    return {"device": devices[0], "dtype": str(dit.dtype).replace("torch.", ""), "decoder": engine.vae.name,
            "text_encoder": getattr(engine, "text_encoder", None) is not None, "world_size": len(devices),
            "devices": devices}


class EngineReplica:
    def __init__(self, spec: dict, registry: str):
        self.replica = serve.get_replica_context().replica_id.unique_id
        ranks = spec.get("ranks", 1)
        self.group = None if ranks == 1 else RankGroup(spec, ranks, spec["rank_resources"], spec["rank_timeout_s"],
                                                       f"histream-{self.replica}")
        self._host = open_host(spec) if self.group is None else None
        self.embeds_dir = spec.get("embeds_dir")
        self.info = describe(self.host, None if self.group is None else self.group.devices)
        self.device = self.info["device"]
        self.registry = ray.get_actor(registry, namespace=NAMESPACE)
        self.registry.replica_seen.remote(self.replica, self.info)
        self._tmp = tempfile.TemporaryDirectory(prefix="histream-replica-")

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
        embeds = str(Path(self.embeds_dir) / req["prompt_embeds"]) if req.get("prompt_embeds") else ""
        request = HostRequest(req["prompt"], embeds, req["frames"], req["height"], req["width"], req["schedule"], req["seed"])
        if self.group is not None:
            return self.group.stream(request)
        return self.host.results(request)

    def run(self, stream_id: str, req: dict):
        if ray.get(self.registry.cancelled.remote(stream_id)):  # cancelled while it waited in Ray's queue: no work
            yield {"event": {"type": "cancelled", "chunks": 0, "seconds": 0.0}}
            return
        yield {"event": {"type": "started", "replica": self.replica, "device": self.device}}
        path = Path(self._tmp.name) / f"{stream_id}.mp4"
        t0 = time.perf_counter()
        writer, chunks, cancelled = None, 0, False
        results = None
        try:
            results = self._results(req)
            for c, frames in results:  # frames [T, H, W, 3] uint8
                if writer is None:
                    writer = Mp4Writer(path, req["width"], req["height"])
                writer.write(torch.from_numpy(frames))
                chunks += 1
                info = {"type": "chunk", "index": c.index, "frames": int(frames.shape[0]), "width": int(frames.shape[2]),
                        "height": int(frames.shape[1]), "denoise_seconds": c.seconds, "vae_seconds": c.vae_seconds,
                        "seconds_since_start": time.perf_counter() - t0, "forwards": c.forwards, "recache": c.recache,
                        "tokens_attended": c.tokens_attended, "cache_bytes": c.cache_bytes, "run_mode": c.run_mode,
                        "realtime_seconds_per_frame": 1.0 / FPS, "replica": self.replica}
                yield {"event": info, "frames": [encode_jpeg(f) for f in frames]}
                if ray.get(self.registry.cancelled.remote(stream_id)):
                    cancelled = True
                    break
            if writer is not None:
                writer.close()
                writer = None
            video = path.read_bytes() if path.is_file() else None
            yield {"event": {"type": "cancelled" if cancelled else "done", "chunks": chunks,
                             "seconds": time.perf_counter() - t0}, "video": video}
        except Exception as exc:  # noqa: BLE001 - the engine's message ends this stream; the replica serves the next
            if writer is not None:
                writer.abort()
            yield {"event": {"type": "failed", "error": f"{type(exc).__name__}: {exc}"}}
        finally:
            if results is not None:
                results.close()
            path.unlink(missing_ok=True)
