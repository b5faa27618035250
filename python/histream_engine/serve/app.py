"""The HTTP API, the per-stream WebSocket and the page (docs/serve.md documents the protocol).

    POST   /api/streams              StreamRequest JSON -> 201 {id, state, position, ...}; 413 body too large, 422 schema,
                                     400 request, 429 queue full
    GET    /api/streams/{id}         status: state (queued, running, done, cancelled, failed), position, chunks, error, video
    DELETE /api/streams/{id}         cancel: a queued stream leaves at once, a running one after its current chunk
    POST   /api/streams/{id}/prompt  PromptSwitch JSON: switch the prompt at the next chunk boundary (409 once ended)
    GET    /api/streams/{id}/video.mp4   what was generated (after done or cancelled)
    GET    /api/info                 model, schedules, limits, embeddings files, device
    WS     /api/streams/{id}/ws      server -> client: JSON events, each "chunk" followed by its JPEG frames as binary
                                     messages; client -> server: {"type": "cancel"}, or {"type": "prompt", prompt or
                                     prompt_embeds, recache}; a bad or oversized message is answered {"type": "error"}
                                     and the stream goes on. A disconnect cancels the stream.
A live stream (``"live": true``) has no frame count: it runs until cancelled, or for ``duration`` seconds (at most the
server's --max-live-seconds); its mp4 keeps at most the last --max-record-seconds.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..checkpoint import CheckpointError
from ..host import HostEngine, HostRequest
from ..runtime.denoise.schedules import SCHEDULES
from . import guards
from .embeddings import EmbeddingsDir
from .jobs import FINAL, Event, JobQueue, Limits, QueueFull

STATIC = Path(__file__).parent / "static"


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", max_length=2000, description="text (needs the model's text encoder)")
    prompt_embeds: str = Field("", description="name of an embeddings file in the server's --embeds-dir")
    frames: int = Field(45, ge=1, description="4k+1, with (frames - 1) / 4 + 1 divisible by 3")
    height: int = Field(256, ge=16)
    width: int = Field(256, ge=16)
    schedule: str = "histream"
    seed: int = Field(0, ge=0, le=2**63 - 1)
    live: bool = Field(False, description="no frame count: run until cancelled (the schedule with positions='window')")
    duration: float | None = Field(None, gt=0, description="live only: seconds to run; default and limit --max-live-seconds")


class PromptSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", max_length=2000)
    prompt_embeds: str = Field("", description="name of an embeddings file in the server's --embeds-dir")
    recache: bool = Field(True, description="re-encode the attended frames under the new prompt (no visual cut)")


def create_app(host: HostEngine, description: str, limits: Limits | None = None, embeds_dir: Path | None = None,
               workdir: Path | None = None) -> FastAPI:
    limits = limits or Limits()
    embeds = EmbeddingsDir(embeds_dir)  # a missing folder stops the server here, not every request later
    queue = JobQueue(limits, workdir)
    prompt_lock = threading.Lock()
    app = FastAPI(title="histream serve", description=__doc__)
    app.state.queue = queue
    app.router.on_shutdown.append(queue.close)
    guards.install(app)  # 413 for bodies over a few KB, before parsing; error bodies quote only excerpts

    def switch_prompt(job, change: PromptSwitch) -> None:
        """Raises ValueError (or CheckpointError) with the reason a switch is refused; the stream goes on either way."""
        path = embeds.path(change.prompt_embeds)
        with prompt_lock:
            job.set_prompt(change.prompt, path, change.recache)

    def job_or_404(job_id: str):
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(404, f"no stream {job_id!r}")
        return job

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/api/info")
    def info() -> dict:
        dit = host.engine.dit
        return {"model": description, "device": device_name(dit), "dtype": str(dit.dtype).replace("torch.", ""),
                "decoder": host.engine.vae.name, "schedules": sorted(SCHEDULES), "limits": vars(limits), "embeddings": embeds.names(),
                "text_encoder": getattr(host.engine, "text_encoder", None) is not None, "fps": 16, "live": True,
                "reconnect_grace_seconds": 0}  # a watcher's disconnect cancels the stream at once: one engine, a FIFO queue

    @app.post("/api/streams", status_code=201)
    def start(req: StreamRequest) -> dict:
        if req.live:
            duration = limits.max_live_seconds if req.duration is None else req.duration
            if duration > limits.max_live_seconds:
                raise HTTPException(400, f"duration={req.duration:g} s is over this server's limit of {limits.max_live_seconds:g} s for a live stream")
        elif req.duration is not None:
            raise HTTPException(400, "duration applies to live streams (\"live\": true); a bounded stream runs for its frames")
        elif req.frames > limits.max_frames:
            raise HTTPException(400, f"frames={req.frames} is over this server's limit of {limits.max_frames}")
        if max(req.height, req.width) > limits.max_side:
            raise HTTPException(400, f"{req.width}x{req.height} is over this server's limit of {limits.max_side} pixels a side")
        if req.schedule not in SCHEDULES:
            raise HTTPException(400, f"unknown schedule {req.schedule!r}; choose one of {sorted(SCHEDULES)}")
        try:
            embeds_path = embeds.path(req.prompt_embeds)
            queue.check_room()
            request = HostRequest(req.prompt, embeds_path, None if req.live else req.frames, req.height, req.width,
                                  req.schedule, req.seed, live=req.live)
            with prompt_lock:  # one request at a time encodes its prompt (and is checked) on the engine's device
                results = host.results(request)
            record = req.model_dump()
            if req.live:
                record.update(frames=None, duration=duration)
            job = queue.submit(record, results)
        except QueueFull as exc:
            raise HTTPException(429, str(exc)) from exc
        except (ValueError, CheckpointError) as exc:  # every check of the engine's, before anything runs
            raise HTTPException(400, str(exc)) from exc
        return job.status(queue.position(job))

    @app.get("/api/streams/{job_id}")
    def status(job_id: str) -> dict:
        job = job_or_404(job_id)
        return job.status(queue.position(job))

    @app.delete("/api/streams/{job_id}")
    def cancel(job_id: str) -> dict:
        job = job_or_404(job_id)
        queue.cancel(job)
        return job.status(queue.position(job))

    @app.post("/api/streams/{job_id}/prompt")
    def prompt(job_id: str, change: PromptSwitch) -> dict:
        job = job_or_404(job_id)
        if job.state in FINAL:
            raise HTTPException(409, f"stream {job_id} is {job.state}: there is nothing to switch")
        try:
            switch_prompt(job, change)
        except (ValueError, TypeError, CheckpointError) as exc:
            raise HTTPException(400, str(exc)) from exc
        return job.status(queue.position(job))

    @app.get("/api/streams/{job_id}/video.mp4")
    def video(job_id: str):
        job = job_or_404(job_id)
        if not job.video_ready:
            return JSONResponse({"detail": f"stream {job_id} is {job.state}: its video is ready once it is done or cancelled "
                                           "after at least one chunk"}, status_code=409)
        return FileResponse(job.video_path, media_type="video/mp4", filename=f"histream-{job_id}.mp4")

    @app.websocket("/api/streams/{job_id}/ws")
    async def watch(ws: WebSocket, job_id: str):
        job = queue.get(job_id)
        await ws.accept()
        if job is None:
            await ws.send_json({"type": "failed", "error": f"no stream {job_id!r}"})
            await ws.close(code=4404)
            return
        events = job.subscribe(asyncio.get_running_loop())

        def left() -> None:
            if job.unsubscribe(events) == 0 and job.state not in FINAL:
                queue.cancel(job)  # nobody is watching: free the engine after the current chunk

        async def listen():
            try:
                while True:
                    msg = await ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        break
                    command, refused = guards.ws_command(msg)
                    if command is None:
                        events.put_nowait(Event({"type": "error", "error": refused}))  # to this socket only, in order
                    elif command["type"] == "cancel":
                        queue.cancel(job)
                    elif command["type"] == "prompt":
                        try:
                            change = PromptSwitch(**{k: v for k, v in command.items() if k != "type"})
                            await asyncio.to_thread(switch_prompt, job, change)
                        except (ValueError, TypeError, CheckpointError) as exc:  # pydantic's ValidationError is a ValueError
                            events.put_nowait(Event({"type": "error", "error": str(exc)[:500]}))
                    else:
                        events.put_nowait(Event({"type": "error", "error": f"unknown command type {guards.excerpt(command['type'], 40)!r}; "
                                                                            "this server takes cancel and prompt"}))
            except WebSocketDisconnect:
                pass
            left()
            events.put_nowait(None)  # wakes the sender, which no new event will reach now

        listener = asyncio.create_task(listen())
        try:
            while True:
                event = await events.get()
                if event is None:
                    return
                await ws.send_json(event.data)
                for frame in event.frames:
                    await ws.send_bytes(frame)
                if event.data["type"] in FINAL:
                    break
            await ws.close()
        except (WebSocketDisconnect, RuntimeError):  # closed under us; Starlette raises RuntimeError on a closed socket
            left()
        finally:
            listener.cancel()
            job.unsubscribe(events)

    return app


def device_name(dit) -> str:
    return torch.cuda.get_device_name(dit.device) if dit.device.type == "cuda" else "CPU"
