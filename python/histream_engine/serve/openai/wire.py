"""What /v1 takes and gives, in OpenAI's shapes (the ``openai`` SDK's ``Video``, ``VideoDeleteResponse``, list pages and
error bodies), and how ``seconds`` and ``size`` read here.

- ``seconds`` is any positive number up to the server's limit, rounded up to whole chunks at 16 fps: the first chunk
  of a video is 4M - 3 frames (9 with chunks of M = 3 latent frames), each further one 4M (12). A video object's
  ``seconds`` is its real duration (frames / 16), for an extension the stitched total.
- ``size`` is ``"WxH"``, any size the engine's schedule and the server's --max-side accept.
- ``V1Error`` is a refusal: its HTTP status is one the SDK maps to an exception class (400 ``BadRequestError``, 401
  ``AuthenticationError``, 404 ``NotFoundError``, 409 ``ConflictError``, 413 an ``APIStatusError``, 429
  ``RateLimitError``), and its body is ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import math
import re

from ...runtime.context import clip_frames
from ...video import FPS

SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
STATUS = {"queued": "queued", "running": "in_progress"}  # a stream's state as a pending video's status
ERROR_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error"}


class V1Error(Exception):
    """A /v1 refusal: the HTTP status, the message, the request field it is about (``param``) and a short code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> V1Error:
    return V1Error(400, message, param, code)


def parse_seconds(value, param: str = "seconds") -> float:
    """A duration as a client sends it: a number, or its text (the SDK sends ``"4"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad(f"{param} must be a number of seconds (e.g. \"4\" or 2.5), got {str(value)[:40]!r}", param)
    try:
        seconds = float(value)
    except ValueError:
        raise bad(f"{param} must be a number of seconds (e.g. \"4\" or 2.5), got {value[:40]!r}", param) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise bad(f"{param} must be a finite number of seconds > 0, got {str(value)[:40]!r}", param)
    return seconds


def video_chunks(seconds: float, chunk_size: int) -> int:
    """The fewest whole chunks a new video of at least ``seconds`` takes."""
    chunks = 1
    while clip_frames(chunks, chunk_size) < seconds * FPS - 1e-9:
        chunks += 1
    return chunks


def extension_chunks(seconds: float, chunk_size: int) -> int:
    """The fewest chunks that add at least ``seconds`` to a video (each adds 4M frames)."""
    return max(1, math.ceil(seconds * FPS / (4 * chunk_size) - 1e-9))


def check_frames(frames: int, max_frames: int, seconds: float, what: str) -> None:
    if frames > max_frames:
        raise bad(f"seconds {seconds:g} takes {frames} frames ({seconds_text(frames)} s, whole chunks at {FPS} fps) for "
                  f"{what}, over this server's limit of {max_frames} frames ({max_frames / FPS:g} s)", "seconds")


def parse_size(value) -> tuple[int, int]:
    """``"WxH"`` as (width, height); the limits and the engine's schedule check the numbers."""
    match = SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise bad(f"size must be \"WIDTHxHEIGHT\" in pixels (e.g. \"832x480\"), got {str(value)[:40]!r}", "size")
    return int(match[1]), int(match[2])


def seconds_text(frames: int) -> str:
    """frames / 16 exactly, as the SDK's ``seconds`` string ("1.3125", "4")."""
    text = f"{frames / FPS:.4f}".rstrip("0").rstrip(".")
    return text or "0"


def video_object(rec: dict, status: str, progress: int) -> dict:
    """The SDK's ``Video`` for a stored record, with its status and progress now (``frames`` and
    ``extended_from_video_id`` are this server's additions)."""
    error = None if rec.get("error") is None else {"code": rec["error"]["code"], "message": rec["error"]["message"]}
    return {"id": rec["id"], "object": "video", "model": rec["model"], "prompt": rec["prompt"],
            "size": f"{rec['width']}x{rec['height']}", "seconds": seconds_text(rec["frames"]), "frames": rec["frames"],
            "status": status, "progress": progress, "created_at": rec["created_at"], "completed_at": rec.get("completed_at"),
            "expires_at": rec.get("expires_at"), "error": error, "remixed_from_video_id": rec.get("remixed_from_video_id"),
            "extended_from_video_id": rec.get("extended_from_video_id")}


def list_page(items: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


def deleted(video_id: str) -> dict:
    return {"id": video_id, "object": "video.deleted", "deleted": True}


def models(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "histream"}]}
