"""What stands between a request's bytes and the API: a body-size limit answered with 413 before anything is read
into memory or parsed, error bodies that quote at most a short excerpt of what was sent, and the same size limit on
a client's WebSocket messages, checked before they are parsed.

The JSON API's bodies and commands are a few hundred bytes, so ``MAX_BODY_BYTES`` keeps every parse to microseconds
on the event loop; a larger body is refused while it arrives (by its Content-Length, or by counting a chunked one).
"""

from __future__ import annotations

import json

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 16 * 1024
MAX_WS_MESSAGE_CHARS = 16 * 1024
EXCERPT_CHARS = 120


def excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class BodyLimit:
    """ASGI middleware: HTTP request bodies over ``limit`` bytes get 413; the rest pass through untouched."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        seen, started, refused = 0, False, False

        async def counted():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not refused:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    # the app sees the client leave (raising here would reach FastAPI's body parser as a 400)
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message):
            nonlocal started
            if refused:
                return  # the 413 has been sent; whatever the app answers to the disconnect is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched_send)

    async def _refuse(self, send):
        body = json.dumps({"detail": f"request body over this server's limit of {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, limit: int = MAX_BODY_BYTES) -> None:
    app.add_middleware(BodyLimit, limit=limit)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": excerpt(e.get("msg", "")), "type": e.get("type"),
                   "input": excerpt(e.get("input"))} for e in exc.errors()[:8]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def refused(_request: Request, exc: HTTPException):
        detail = excerpt(exc.detail, 600) if isinstance(exc.detail, str) else exc.detail
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def ws_command(message: dict, limit: int = MAX_WS_MESSAGE_CHARS) -> tuple[dict | None, str | None]:
    """A client's WebSocket message (an ASGI ``websocket.receive``) as ``(command, None)``, or ``(None, why not)``.

    The size is checked before parsing: the servers' WebSocket layers accept messages of up to 16 MiB, and parsing
    one on the event loop would stall every other client."""
    text = message.get("text")
    if text is None:
        return None, "commands are JSON text messages, not binary ones"
    if len(text) > limit:
        return None, f"a message of {len(text)} characters is over this server's limit of {limit}; commands are a few hundred"
    try:
        command = json.loads(text)
    except ValueError:
        return None, f"not JSON: {excerpt(text, 60)}"
    if not isinstance(command, dict) or not isinstance(command.get("type"), str):
        return None, f'a command is a JSON object with a "type" (cancel, prompt), got {excerpt(command, 60)}'
    return command, None
