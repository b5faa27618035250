"""The engine deployment of ``histream serve --ray``: each replica holds one engine and runs one stream at a time.

``run`` is a streaming method (the caller uses ``handle.options(stream=True)``): it yields the replica's name, then
each chunk with its JPEG frames, then the end with the mp4's bytes (sent back, so no state stays on the replica's
node). A request the engine refuses, or an error while it runs (an out-of-memory on a GPU), ends that stream with
the engine's message; the replica stays up for the next one. A cancel is read from the stream registry before the
stream starts and after each chunk.

The replica reports itself to the registry (device, dtype, decoder, text encoder) when it starts and on every Serve
health check, and says goodbye when Serve stops it cleanly, so ``/api/info`` lists the replicas that exist.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import serve

from .. import host as hosting
from ..video import FPS, Mp4Writer
from .jobs import encode_jpeg
from .stream_registry import NAMESPACE


def open_host(spec: dict) -> hosting.HostEngine:
    """The engine a replica holds, from the CLI's model options (``model_dir`` None: the tiny demo model)."""
    if spec["model_dir"] is None:
        return hosting.tiny_demo(spec["device"] or "cpu", spec["attention"], 0)
    return hosting.open_engine(spec["model_dir"], spec["checkpoint"] or "", spec["dtype"], spec["device"] or "",
                               spec["attention"], False, spec["text_encoder"], spec.get("tae_path", ""))


def describe(host: hosting.HostEngine) -> dict:
    """What ``/api/info`` shows of a replica: the model as it runs there."""
    engine = host.engine
    dit = engine.dit
    return {"device": torch.cuda.get_device_name(dit.device) if dit.device.type == "cuda" else "CPU",
            "dtype": str(dit.dtype).replace("torch.", ""), "decoder": engine.vae.name,
            "text_encoder": getattr(engine, "text_encoder", None) is not None}


class EngineReplica:
    def __init__(self, spec: dict, registry: str):
        self.host = open_host(spec)
        self.embeds_dir = spec.get("embeds_dir")
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.info = describe(self.host)
        self.device = self.info["device"]
        self.registry = ray.get_actor(registry, namespace=NAMESPACE)
        self.registry.replica_seen.remote(self.replica, self.info)
        self._tmp = tempfile.TemporaryDirectory(prefix="histream-replica-")

    def check_health(self) -> None:
        """Serve calls this every health-check period: the registry hears that this replica is alive. Never raises:
        the replica's health is its own, not the registry's."""
        try:
            self.registry.replica_seen.remote(self.replica, self.info)
        except Exception:  # noqa: BLE001
            pass

    def __del__(self) -> None:
        """Serve calls this when it stops the replica cleanly (scaled down, redeployed). Waits for the registry (at most
        2 s): the process ends right after, and a call still unsent would be lost with it."""
        try:
            ray.get(self.registry.replica_down.remote(self.replica), timeout=2)
        except Exception:  # noqa: BLE001 - the registry may be gone first; the list ages the replica out then
            pass

    def _results(self, req: dict):
        embeds = str(Path(self.embeds_dir) / req["prompt_embeds"]) if req.get("prompt_embeds") else ""
        return self.host.results(req["prompt"], embeds, req["frames"], req["height"], req["width"], req["schedule"], req["seed"])

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
