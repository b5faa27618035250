"""The /v1 routes (OpenAI's Videos API and /v1/models) over the app's ``VideoService`` (``app.state.videos``).

    POST   /v1/videos                   create: JSON or a multipart form (prompt, model, seconds, size, input_reference)
    GET    /v1/videos                   list: after, limit (1-100), order (asc, desc)
    GET    /v1/videos/{id}              the video object
    DELETE /v1/videos/{id}              the video and its files (a pending one's stream is cancelled)
    GET    /v1/videos/{id}/content      variant=video (mp4), thumbnail or spritesheet (JPEG)
    POST   /v1/videos/extensions        video {"id"} (form: video[id]) or an uploaded mp4, prompt, seconds
    POST   /v1/videos/{id}/remix        prompt
    GET    /v1/models                   the one model served

Every refusal is ``V1Error``, answered in OpenAI's error shape (``wire.V1Error.body``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from .forms import read_form
from .service import VideoService
from .wire import V1Error

routes = APIRouter(prefix="/v1")
UPLOAD_PATHS = ("/v1/videos", "/v1/videos/extensions")  # the routes whose bodies may carry files (--max-upload-bytes)


def service_of(request: Request) -> VideoService:
    return request.app.state.videos


async def v1_error(_request: Request, exc: V1Error) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@routes.post("/videos")
async def create(request: Request) -> dict:
    return await service_of(request).create(await read_form(request))


@routes.get("/videos")
async def listing(request: Request, after: str | None = None, limit: str | None = None, order: str | None = None) -> dict:
    return await service_of(request).page(after, limit, order)


@routes.post("/videos/extensions")
async def extend(request: Request) -> dict:
    return await service_of(request).extend(await read_form(request))


@routes.get("/videos/{video_id}")
async def retrieve(request: Request, video_id: str) -> dict:
    return await service_of(request).retrieve(video_id)


@routes.delete("/videos/{video_id}")
async def delete(request: Request, video_id: str) -> dict:
    return await service_of(request).delete(video_id)


@routes.get("/videos/{video_id}/content")
async def content(request: Request, video_id: str, variant: str | None = None) -> Response:
    data, kind, name = await service_of(request).content(video_id, variant)
    if isinstance(data, Path):
        return FileResponse(data, media_type=kind, filename=name)
    return Response(data, media_type=kind, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@routes.post("/videos/{video_id}/remix")
async def remix(request: Request, video_id: str) -> dict:
    return await service_of(request).remix(video_id, await read_form(request))


@routes.get("/models")
async def models(request: Request) -> dict:
    return service_of(request).models()
