"""The HTTP API, the per-stream WebSocket and the page, over a transport (docs/serve.md documents the protocol).

    POST   /api/streams              StreamRequest JSON -> 201 {id, state, position, ...}; 413 body too large, 422 schema,
                                     400 request, 429 queue full
    GET    /api/streams/{id}         status: state (queued, running, done, cancelled, failed), position, chunks, error, video
    DELETE /api/streams/{id}         cancel: a queued stream leaves at once, a running one after its current chunk
    POST   /api/streams/{id}/prompt  PromptSwitchRequest JSON: switch the prompt at the next chunk boundary (409 once ended)
    GET    /api/streams/{id}/video.mp4   what was generated (after done or cancelled)
    GET    /api/info                 model, schedules, limits, embeddings files, device
    WS     /api/streams/{id}/ws      the stream's events and the client's commands (``pump``)

A live stream (``"live": true``) has no frame count: it runs until cancelled, or for ``duration`` seconds (at most the
server's --max-live-seconds); its mp4 keeps at most the last --max-record-seconds.

``build_app`` is the one app of both servers: plain ``histream serve`` runs it with uvicorn over ``local.LocalTransport``,
and ``--ray``'s ingress deployment builds the very same app over ``ray.ingress.RayTransport``. The routes hold no state;
each reads the transport from ``app.state``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from . import auth, guards
from .openai import routes as v1
from .openai.service import VideoService
from .openai.wire import V1Error
from .protocol import PromptSwitchRequest, Refused, StreamRequest
from .pump import pump
from .transport import Transport

STATIC = Path(__file__).parent / "static"

routes = APIRouter()


def build_app(transport: Transport, title: str = "histream serve", videos: VideoService | None = None,
              key_digest: bytes | None = None) -> FastAPI:
    """``videos``: OpenAI's Videos API on /v1 as well (``openai.routes``); ``key_digest``: every route needs the API key
    whose SHA-256 this is (``auth``)."""
    app = FastAPI(title=title, description=__doc__)
    app.state.transport = transport
    app.router.on_shutdown.append(transport.close)
    uploads = None if videos is None else dict.fromkeys(v1.UPLOAD_PATHS, videos.options.max_upload_bytes)
    guards.install(app, uploads=uploads)  # 413 for bodies over a few KB (uploads: their limit), before parsing
    app.add_exception_handler(Refused, refused)
    app.include_router(routes)
    if videos is not None:
        app.state.videos = videos
        app.add_exception_handler(V1Error, v1.v1_error)
        app.include_router(v1.routes)
    auth.install(app, key_digest)  # last, so it runs first: no body is read for a request without the key
    return app


async def refused(_request: Request, exc: Refused) -> JSONResponse:
    return JSONResponse({"detail": guards.excerpt(exc.detail, 600)}, status_code=exc.status)


def transport_of(request: Request | WebSocket) -> Transport:
    return request.app.state.transport


@routes.get("/", response_class=HTMLResponse)
def page() -> str:
    return (STATIC / "index.html").read_text()


@routes.get("/api/info")
async def info(request: Request) -> dict:
    return await transport_of(request).info()


@routes.post("/api/streams", status_code=201)
async def start(request: Request, req: StreamRequest) -> dict:
    return await transport_of(request).start(req)


@routes.get("/api/streams/{stream_id}")
async def status(request: Request, stream_id: str) -> dict:
    return await transport_of(request).status(stream_id)


@routes.delete("/api/streams/{stream_id}")
async def cancel(request: Request, stream_id: str) -> dict:
    return await transport_of(request).cancel(stream_id)


@routes.post("/api/streams/{stream_id}/prompt")
async def prompt(request: Request, stream_id: str, change: PromptSwitchRequest) -> dict:
    return await transport_of(request).switch(stream_id, change)


@routes.get("/api/streams/{stream_id}/video.mp4")
async def video(request: Request, stream_id: str) -> Response:
    mp4 = await transport_of(request).video(stream_id)
    name = f"histream-{stream_id}.mp4"
    if isinstance(mp4, Path):
        return FileResponse(mp4, media_type="video/mp4", filename=name)
    return Response(mp4, media_type="video/mp4", headers={"Content-Disposition": f'attachment; filename="{name}"'})


@routes.websocket("/api/streams/{stream_id}/ws")
async def watch(ws: WebSocket, stream_id: str) -> None:
    await pump(ws, transport_of(ws), stream_id)
