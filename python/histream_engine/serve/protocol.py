"""The wire protocol both servers speak (docs/serve.md): what a client sends, what the server checks it against, and
every message the server sends back. Plain ``histream serve`` and ``--ray`` are transports over this module; neither
defines a request field, a limit, an event or a state of its own.

- Requests: ``StreamRequest`` (``POST /api/streams``) and ``PromptSwitchRequest`` (``POST /api/streams/{id}/prompt`` and the
  WebSocket's ``prompt`` command), strict: a JSON ``true`` is not a number, ``"yes"`` not a boolean, ``9.0`` not a
  frame count (422).
- ``Limits``: the server's limits, checked once when they are made (the CLI's options: a limit that would refuse
  every request, or none, stops the server at startup with one line); ``check_port`` likewise.
- ``plan``: a request checked against the limits (400 with the reason), as the record a stream's status shows.
- Events: ``chunk_event``, ``final_event``, ``prompt_event``, ``replay_event``, ``resumed_event``, ``error_event``; ``FINAL`` names the
  states a stream ends in. ``Refused`` is a refusal with its HTTP status, which the WebSocket pump turns into an
  ``error`` event.
- ``info``: the ``/api/info`` payload.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.denoise.schedules import SCHEDULES
from ..video import FPS

FINAL = ("done", "cancelled", "failed")
DEFAULT_FRAMES = 45


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field("", max_length=2000, description="text (needs the model's text encoder)")
    prompt_embeds: str = Field("", description="name of an embeddings file in the server's --embeds-dir")
    frames: int | None = Field(None, ge=1, description=f"4k+1, with (frames - 1) / 4 + 1 divisible by 3; default "
                                                        f"{DEFAULT_FRAMES}; not with live")
    height: int = Field(256, ge=16)
    width: int = Field(256, ge=16)
    schedule: str = "histream"
    seed: int = Field(0, ge=0, le=2**63 - 1)
    live: bool = Field(False, description="no frame count: run until cancelled (the schedule with positions='window')")
    duration: float | None = Field(None, gt=0, allow_inf_nan=False,
                                   description="live only: seconds to run; default and limit --max-live-seconds")


class PromptSwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field("", max_length=2000)
    prompt_embeds: str = Field("", description="name of an embeddings file in the server's --embeds-dir")
    recache: bool = Field(True, description="re-encode the attended frames under the new prompt (no visual cut)")


class Refused(Exception):
    """A request or command this server refuses: the HTTP status, and the reason (the ``detail``, or an ``error`` event
    on a WebSocket)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Limits:
    """The server's limits (the CLI's ``--max-*`` options). Each is checked here, so ``--max-queue 0`` (every request
    429) or ``--max-live-seconds nan`` (no limit at all) stops the server at startup instead."""

    max_frames: int = 161
    max_side: int = 1920  # pixels, height and width each
    max_queue: int = 8  # streams waiting (the running ones not counted)
    max_live_seconds: float = 300.0  # the longest a live stream may run
    max_record_seconds: float = 60.0  # a live stream's mp4 keeps at most its last this many seconds
    max_replay_seconds: float | None = None  # the frames a watcher who joins late is sent; None: max_record_seconds

    def __post_init__(self):
        for name, least in (("max_frames", 1), ("max_side", 16), ("max_queue", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{option(name)} {value!r}: give a whole number >= {least}")
        for name in ("max_live_seconds", "max_record_seconds", "max_replay_seconds"):
            value = getattr(self, name)
            if value is None and name == "max_replay_seconds":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{option(name)} {value!r}: give a finite number of seconds > 0")

    @property
    def replay_seconds(self) -> float:
        return self.max_record_seconds if self.max_replay_seconds is None else self.max_replay_seconds

    @property
    def replay_frames(self) -> int:
        """The most frames a stream holds for watchers who join late (whole chunks; its newest chunk always)."""
        return max(1, int(self.replay_seconds * FPS))

    def public(self) -> dict:
        """The limits as ``/api/info`` shows them."""
        return {**asdict(self), "max_replay_seconds": self.replay_seconds}


def option(field: str) -> str:
    """The CLI option that sets a ``Limits`` field."""
    return "--" + field.replace("_", "-")


def check_port(port) -> int:
    """``--port``: 1 to 65535, or 0 for any free port (the server prints the one it got)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--port {port!r}: give a TCP port from 1 to 65535, or 0 for any free one")
    return port


def plan(req: StreamRequest, limits: Limits) -> dict:
    """``req`` checked against the limits and made whole (a live stream's duration, a bounded one's frames): the record
    a stream's status shows as ``request``. Raises ``Refused`` (400) with the reason; the engine's own checks follow."""
    if req.live:
        if req.frames is not None:
            raise Refused(400, f"frames={req.frames} contradicts \"live\": true: a live stream has no frame count; drop "
                               "frames, or drop live for a video of that many frames")
        duration = limits.max_live_seconds if req.duration is None else req.duration
        if duration > limits.max_live_seconds:
            raise Refused(400, f"duration={duration:g} s is over this server's limit of {limits.max_live_seconds:g} s for a "
                               "live stream")
        frames = None
    elif req.duration is not None:
        raise Refused(400, "duration applies to live streams (\"live\": true); a bounded stream runs for its frames")
    else:
        duration, frames = None, DEFAULT_FRAMES if req.frames is None else req.frames
        if frames > limits.max_frames:
            raise Refused(400, f"frames={frames} is over this server's limit of {limits.max_frames}")
    if max(req.height, req.width) > limits.max_side:
        raise Refused(400, f"{req.width}x{req.height} is over this server's limit of {limits.max_side} pixels a side")
    if req.schedule not in SCHEDULES:
        raise Refused(400, f"unknown schedule {req.schedule!r}; choose one of {sorted(SCHEDULES)}")
    return {**req.model_dump(), "frames": frames, "duration": duration}


# ---- what the server sends ----

def chunk_event(c, frames, seconds_since_start: float, tags: dict) -> dict:
    """One chunk's event (its JPEG frames follow it on the wire). ``c`` is the engine's ChunkResult, ``frames``
    ``[T, H, W, 3]`` uint8."""
    return {"type": "chunk", "index": c.index, "frames": int(frames.shape[0]), "width": int(frames.shape[2]),
            "height": int(frames.shape[1]), "denoise_seconds": c.seconds, "vae_seconds": c.vae_seconds,
            "seconds_since_start": seconds_since_start, "forwards": c.forwards, "recache": c.recache,
            "tokens_attended": c.tokens_attended, "cache_bytes": c.cache_bytes, "run_mode": c.run_mode,
            "realtime_seconds_per_frame": 1.0 / FPS, "prompt_switch": switch_record(c.prompt_switch), **tags}


def switch_record(switch) -> dict | None:
    """A chunk's ``prompt_switch`` as JSON: the chunk table marks where one landed."""
    if switch is None:
        return None
    return {"recache": switch.recache, "forwards": switch.forwards, "seconds": switch.seconds}


def final_event(state: str, chunks: int, seconds: float, video: str | None = None, video_note: str | None = None,
                reason: str | None = None, error: str | None = None) -> dict:
    """How a stream ended: ``done`` or ``cancelled`` (``reason``: why the server, not a client, ended it), or ``failed``
    with the ``error``."""
    if state == "failed":
        return {"type": "failed", "error": error}
    return {"type": state, "chunks": chunks, "seconds": seconds, "video": video, "video_note": video_note, "reason": reason}


def prompt_event(change: PromptSwitchRequest) -> dict:
    """A switch accepted: it lands at the next chunk boundary, and that chunk's ``prompt_switch`` says so."""
    return {"type": "prompt", "accepted": True, "recache": change.recache,
            "prompt": change.prompt[:200] if change.prompt else None, "prompt_embeds": change.prompt_embeds or None}


def replay_event(from_chunk: int, dropped_frames: int, why: str) -> dict:
    """The first message to a watcher whose history reaches back before the frames a stream still holds: chunk events
    before ``from_chunk`` come without their JPEG frames."""
    return {"type": "replay", "from_chunk": from_chunk, "dropped_frames": dropped_frames, "why": why}


def resumed_event(index: int, attempt: int, why: str, tags: dict) -> dict:
    """The stream goes on after its worker was lost (``resilience``): from chunk ``index`` on, every chunk before it
    having been sent once, the frames after the seam those of the uninterrupted stream re-cached under the same prompt
    at that boundary. ``attempt``: the stream's resumes so far; ``why``: what was lost. ``tags``: as ``started``'s."""
    return {"type": "resumed", "index": index, "attempt": attempt, "why": why, **tags}


def error_event(why: str) -> dict:
    """An answer to one socket's message or command: that socket only, and the stream goes on."""
    return {"type": "error", "error": why}


def status(stream_id: str, state: str, request: dict, chunks: int, *, position: int | None = None, error: str | None = None,
           reason: str | None = None, video: bool = False, video_note: str | None = None, **tags) -> dict:
    """``GET /api/streams/{id}``."""
    return {"id": stream_id, "state": state, "position": position, "chunks": chunks, "error": error, "reason": reason,
            "request": request, "video": video_url(stream_id) if video else None, "video_note": video_note, **tags}


def video_url(stream_id: str) -> str:
    return f"/api/streams/{stream_id}/video.mp4"


def info(model: str, device: str, dtype: str, decoder: str, text_encoder: bool, limits: Limits, embeddings: list[str],
         reconnect_grace_seconds: float, **extra) -> dict:
    """``GET /api/info``: what the server runs and takes. Both transports take live streams and prompt switches."""
    return {"model": model, "device": device, "dtype": dtype, "decoder": decoder, "schedules": sorted(SCHEDULES),
            "limits": limits.public(), "embeddings": embeddings, "text_encoder": text_encoder, "fps": FPS, "live": True,
            "reconnect_grace_seconds": reconnect_grace_seconds, **extra}


def device_name(host) -> str:
    """The device a host engine's DiT runs on, as ``/api/info`` names it."""
    dit = host.engine.dit
    return torch.cuda.get_device_name(dit.device) if dit.device.type == "cuda" else "CPU"


def dtype_name(host) -> str:
    return str(host.engine.dit.dtype).replace("torch.", "")
