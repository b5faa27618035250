"""What stands between a request's bytes and the API: a body-size limit answered with 413 before anything is read
into memory or parsed, a nesting limit on JSON answered with 422 before it is parsed, error bodies that quote at most a
short excerpt of what was sent, and one decoder for a client's WebSocket messages (``decode_command``) with the same
limits, which answers every message: a command, or why it is not one.

The JSON API's bodies and commands are a few hundred bytes, so ``MAX_BODY_BYTES`` keeps every parse to microseconds
on the event loop; a larger body is refused while it arrives (by its Content-Length, or by counting a chunked one).
Nesting is limited because Python's JSON parser recurses: 16 KB of ``[`` raise RecursionError, which no caller
expects.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 16 * 1024
MAX_WS_MESSAGE_CHARS = 16 * 1024
MAX_JSON_DEPTH = 32  # requests and commands are flat objects; a schedule dict nests two levels
EXCERPT_CHARS = 120
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def json_depth(text: str) -> int:
    """How deep ``text``'s arrays and objects nest, counted without parsing (brackets inside strings do not count)."""
    steps = (1 if b in "[{" else -1 for b in _BRACKET.findall(_STRING.sub("", text)))
    return max(accumulate(steps, initial=0))


def too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> str | None:
    depth = json_depth(text)
    if depth <= limit:
        return None
    return f"JSON nested {depth} levels deep is over this server's limit of {limit}; requests and commands are flat objects"


class BodyLimit:
    """ASGI middleware: an HTTP request body over ``limit`` bytes gets 413, one whose JSON nests too deep 422; the rest
    reach the app as sent. A body is at most ``limit`` bytes, so it is read whole before the app sees it. ``uploads``
    raises the limit for multipart forms POSTed to the routes that take files (path -> bytes: /v1's
    --max-upload-bytes; their JSON bodies keep ``limit``); a /v1 route's refusal is in OpenAI's error shape."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, uploads: dict[str, int] | None = None):
        self.app, self.limit, self.uploads = app, limit, uploads or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope.get("path", ""), dict(scope.get("headers") or [])
        form = headers.get(b"content-type", b"").lower().startswith(b"multipart/")  # files: no JSON to nest
        limit = self.uploads.get(path, self.limit) if form and scope.get("method") == "POST" else self.limit
        too_large = f"request body over this server's limit of {limit} bytes"
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await answer(send, 413, too_large, path)
        body, message = b"", {"more_body": True}
        while message.get("more_body"):
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            if len(body) > limit:
                return await answer(send, 413, too_large, path)
        if not form and (why := too_deep(body.decode("utf-8", "replace"))) is not None:
            return await answer(send, 422, why, path)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client's disconnect, as the app expects
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def answer(send, status: int, detail: str, path: str = "") -> None:
    if path.startswith("/v1/"):  # OpenAI's shape, which its SDK reads (serve/openai/wire.py)
        error = {"message": detail, "type": "invalid_request_error", "param": None,
                 "code": "request_too_large" if status == 413 else "invalid_request"}
        body = json.dumps({"error": error}).encode()
    else:
        body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, limit: int = MAX_BODY_BYTES, uploads: dict[str, int] | None = None) -> None:
    app.add_middleware(BodyLimit, limit=limit, uploads=uploads)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": excerpt(e.get("msg", "")), "type": e.get("type"),
                   "input": excerpt(e.get("input"))} for e in exc.errors()[:8]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def refused(_request: Request, exc: HTTPException):
        detail = excerpt(exc.detail, 600) if isinstance(exc.detail, str) else exc.detail
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def decode_command(message: dict, limit: int = MAX_WS_MESSAGE_CHARS) -> tuple[dict | None, str | None]:
    """A client's WebSocket message (an ASGI ``websocket.receive``) as ``(command, None)``, or ``(None, why not)``;
    never raises.

    The size and the nesting are checked before parsing: the servers' WebSocket layers accept messages of up to
    16 MiB, and parsing one on the event loop would stall every other client."""
    text = message.get("text")
    if text is None:
        return None, "commands are JSON text messages, not binary ones"
    if len(text) > limit:
        return None, f"a message of {len(text)} characters is over this server's limit of {limit}; commands are a few hundred"
    if (why := too_deep(text)) is not None:
        return None, why
    try:
        command = json.loads(text)
    except (ValueError, RecursionError):
        return None, f"not JSON: {excerpt(text, 60)}"
    if not isinstance(command, dict) or not isinstance(command.get("type"), str):
        return None, f'a command is a JSON object with a "type" (cancel, prompt), got {excerpt(command, 60)}'
    return command, None
