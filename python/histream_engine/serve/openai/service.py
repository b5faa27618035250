"""The /v1 videos over a transport: each video is a bounded stream of the transport (the one session code both
servers run), its files and record in the store.

- ``create``: a new video, from a prompt, optionally conditioned on an ``input_reference`` image of its size.
- ``extend``: by id, the extended video's final state resumed under the new prompt for the chunks ``seconds`` asks
  for (``Engine.resume``); from an uploaded mp4, conditioned on the upload's last whole-chunk clip. The stored video
  is the extended one followed by the new frames; its ``seconds`` is the stitched total.
- ``remix``: a new video made as the source was first made (its size, length, seed and ``input_reference``), under
  another prompt.
- ``retrieve`` and ``page``: a pending video's status and progress come from its stream (chunks done of all), a
  finished one's from the store. A stream that ended without handing its video to the store (cancelled while it
  waited, lost with its replica or a restart) fails the video with the stream's reason when it is next read.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

from ...runtime.context import clip_frames
from ...runtime.denoise.schedules import SCHEDULES, resolve_schedule
from ...runtime.engine_config import EngineConfig
from ...runtime.request_checks import RequestError
from ...runtime.video_request import check_video_request
from ...video import FPS
from ..protocol import FINAL, Limits, Refused
from . import media, wire
from .forms import Form
from .options import VideoOptions
from .store import VARIANTS, AsyncStore, new_id
from .wire import V1Error, bad

DEFAULT_SECONDS = 4.0
DEFAULT_SIZE = "832x480"  # Wan2.1's 480p
DEFAULT_SCHEDULE = "histream"
CREATE_FIELDS = {"prompt", "model", "seconds", "size", "input_reference", "seed", "schedule", "prompt_embeds"}
EXTEND_FIELDS = {"video", "video[id]", "prompt", "seconds", "prompt_embeds"}
REMIX_FIELDS = {"prompt", "prompt_embeds"}
MAX_SEED = 2**63 - 1


def not_found(video_id: str) -> V1Error:
    return V1Error(404, f"no video {video_id[:80]!r} on this server (a video is kept until its expires_at)", "video_id",
                   "not_found")


class VideoService:
    def __init__(self, transport, store: AsyncStore, options: VideoOptions, limits: Limits):
        self.transport, self.store, self.options, self.limits = transport, store, options, limits
        self.chunk_size = EngineConfig().chunk_size
        self.started = int(time.time())

    # ---- new videos ----
    async def create(self, form: Form) -> dict:
        form.check_known(CREATE_FIELDS)
        prompt, embeds = self._prompt(form)
        model = form.text("model", default=self.options.model)
        if model != self.options.model:
            raise V1Error(400, f"model {model[:60]!r} is not served here; this server serves {self.options.model!r} "
                               "(GET /v1/models)", "model", "model_not_found")
        schedule = form.text("schedule", default=DEFAULT_SCHEDULE)
        if schedule not in SCHEDULES:
            raise bad(f"unknown schedule {schedule[:60]!r}; choose one of {sorted(SCHEDULES)}", "schedule")
        seconds = wire.parse_seconds(form.fields.get("seconds", DEFAULT_SECONDS))
        chunks = wire.video_chunks(seconds, self.chunk_size)
        frames = clip_frames(chunks, self.chunk_size)
        wire.check_frames(frames, self.limits.max_frames, seconds, "a video")
        width, height = wire.parse_size(form.fields.get("size", DEFAULT_SIZE))
        self._check_size(width, height, frames, schedule)
        inputs, context = {}, None
        if "input_reference" in form.files or "input_reference" in form.fields:
            inputs["reference.png"], context = self._reference(form, width, height), "image"
        seed = form.integer("seed", 0, MAX_SEED)
        rec = self._record(prompt, embeds, width, height, frames, secrets.randbelow(MAX_SEED) if seed is None else seed,
                           schedule, {"kind": "create", "context": context, "stream_frames": frames, "chunks": chunks,
                                      "resume": False})
        return await self._start(rec, inputs)

    async def extend(self, form: Form) -> dict:
        form.check_known(EXTEND_FIELDS)
        prompt, embeds = self._prompt(form)
        seconds = wire.parse_seconds(form.fields["seconds"]) if "seconds" in form.fields else None
        if seconds is None:
            raise bad("seconds is required: how much to add to the video", "seconds", "missing_required_parameter")
        chunks = wire.extension_chunks(seconds, self.chunk_size)
        new_frames = 4 * self.chunk_size * chunks
        wire.check_frames(new_frames, self.limits.max_frames, seconds, "an extension")
        if "video" in form.files:
            return await self._extend_upload(form.files["video"].data, prompt, embeds, chunks, new_frames)
        return await self._extend_id(video_reference(form), prompt, embeds, chunks, new_frames)

    async def _extend_id(self, source_id: str, prompt: str, embeds: str, chunks: int, new_frames: int) -> dict:
        src = await self._completed(source_id, "extend")
        if not await self.store.has_state(source_id):
            raise V1Error(409, f"video {source_id} has no stored state to go on from (schedule {src['schedule']!r} keeps the "
                               "whole history, which a state without the rings cannot resume): it cannot be extended",
                          "video", "video_not_extendable")
        rec = self._record(prompt, embeds, src["width"], src["height"], src["frames"] + new_frames, src["seed"],
                           src["schedule"], {"kind": "extend", "context": None, "chunks": chunks, "resume": True},
                           extended_from_video_id=source_id)
        return await self._start(rec, {}, {"prefix.mp4": (source_id, "video.mp4"),
                                           "resume.safetensors": (source_id, "state.safetensors")})

    async def _extend_upload(self, data: bytes, prompt: str, embeds: str, chunks: int, new_frames: int) -> dict:
        with tempfile.TemporaryDirectory(prefix="histream-upload-") as tmp:
            path = Path(tmp) / "upload.mp4"
            path.write_bytes(data)
            width, height, frames = media.probe_video(path, "video")
        self._check_size(width, height, clip_frames(1, self.chunk_size), DEFAULT_SCHEDULE, "the uploaded video's ")
        room = min(frames, self.limits.max_frames - new_frames)
        whole = [clip_frames(j, self.chunk_size) for j in range(1, room + 1) if clip_frames(j, self.chunk_size) <= room]
        if not whole:
            least = clip_frames(1, self.chunk_size)
            why = (f"it has {frames} frames" if frames < least else
                   f"{new_frames} new frames leave room for {room} of this server's {self.limits.max_frames}")
            raise bad(f"an extension of an uploaded video goes on from its last whole chunks, {least}, "
                      f"{clip_frames(2, self.chunk_size)}, {clip_frames(3, self.chunk_size)}, ... frames ({FPS} fps), and "
                      f"{why}: upload a longer video, or ask for fewer seconds", "video", "video_too_short")
        rec = self._record(prompt, embeds, width, height, frames + new_frames, secrets.randbelow(MAX_SEED), DEFAULT_SCHEDULE,
                           {"kind": "upload", "context": "clip", "clip_frames": whole[-1],
                            "stream_frames": whole[-1] + new_frames, "chunks": chunks, "resume": False})
        return await self._start(rec, {"source.mp4": data})

    async def remix(self, source_id: str, form: Form) -> dict:
        form.check_known(REMIX_FIELDS)
        prompt, embeds = self._prompt(form)
        src = await self._completed(source_id, "remix")
        if src["job"]["kind"] == "upload":
            raise bad(f"video {source_id} goes on from an uploaded video, which this server does not keep: extend the "
                      "upload again under the new prompt instead", "video_id", "video_not_remixable")
        frames = src["frames"]
        if frames > self.limits.max_frames:
            raise bad(f"video {source_id} is {frames} frames, over this server's limit of {self.limits.max_frames} for "
                      "one stream: a remix makes it again in one", "video_id")
        image = src["job"].get("context") == "image"
        rec = self._record(prompt, embeds, src["width"], src["height"], frames, src["seed"], src["schedule"],
                           {"kind": "remix", "context": "image" if image else None, "stream_frames": frames,
                            "chunks": (frames + 3) // (4 * self.chunk_size), "resume": False},
                           remixed_from_video_id=source_id)
        return await self._start(rec, {}, {"reference.png": (source_id, "reference.png")} if image else None)

    # ---- the parts of a request ----
    def _prompt(self, form: Form) -> tuple[str, str]:
        prompt = form.text("prompt", required=True)
        embeds = form.text("prompt_embeds", default="", limit=255)
        if not prompt.strip() and not embeds:
            raise bad("prompt is empty: describe the video (or name an --embeds-dir file as prompt_embeds)", "prompt")
        return prompt, embeds

    def _check_size(self, width: int, height: int, frames: int, schedule: str, whose: str = "") -> None:
        if max(width, height) > self.limits.max_side:
            raise bad(f"{whose}size {width}x{height} is over this server's limit of {self.limits.max_side} pixels a side",
                      "size" if not whose else "video")
        try:
            check_video_request(frames, height, width, self.chunk_size, resolve_schedule(schedule))
        except RequestError as exc:
            raise bad(f"{whose}size {width}x{height}: {exc.message}", "size" if not whose else "video") from None

    def _reference(self, form: Form, width: int, height: int) -> bytes:
        upload = form.files.get("input_reference")
        if upload is None:
            raise bad("input_reference must be an uploaded image file (a multipart form's file); a URL or a file id is "
                      "not taken here", "input_reference")
        got = media.image_size(upload.data, "input_reference")
        if got != (width, height):
            raise bad(f"input_reference is {got[0]}x{got[1]} but the video is {width}x{height}: give an image of the "
                      "video's size (this server does not resize or crop)", "input_reference", "invalid_image_size")
        return media.png(media.read_image(upload.data, "input_reference"))

    def _record(self, prompt: str, embeds: str, width: int, height: int, frames: int, seed: int, schedule: str, job: dict,
                **fields) -> dict:
        return {"id": new_id(), "created_at": int(time.time()), "model": self.options.model, "prompt": prompt,
                "prompt_embeds": embeds, "stand_in": self.options.stand_in_text and not embeds, "width": width,
                "height": height, "frames": frames, "seed": seed, "schedule": schedule, "job": job, "stream_id": None,
                "error": None, "remixed_from_video_id": None, "extended_from_video_id": None, **fields}

    async def _start(self, rec: dict, inputs: dict, adopt: dict | None = None) -> dict:
        rec = await self.store.create(rec, inputs, adopt)
        try:
            status = await self.transport.start_video(stream_record(rec))
        except Refused as refused:
            await self.store.delete(rec["id"])
            raise V1Error(refused.status if refused.status in (400, 429) else 400, refused.detail,
                          code="queue_full" if refused.status == 429 else "invalid_request") from None
        await self.store.set_stream(rec["id"], status["id"])
        return await self.retrieve(rec["id"])

    async def _completed(self, video_id: str, what: str) -> dict:
        """A video that can be extended or remixed: 404 unknown, 409 not (or never) completed."""
        obj = await self.retrieve(video_id)
        if obj["status"] != "completed":
            why = "it failed: there is nothing to " + what if obj["status"] == "failed" else f"{what} it once it has completed"
            raise V1Error(409, f"video {video_id} is {obj['status']}: {why}", "video", f"video_{obj['status']}")
        rec = await self.store.get(video_id)
        if rec is None:
            raise not_found(video_id)
        return rec

    # ---- reading, listing, deleting ----
    async def retrieve(self, video_id: str) -> dict:
        rec = await self.store.get(video_id)
        if rec is None:
            raise not_found(video_id)
        return await self._object(rec)

    async def _object(self, rec: dict) -> dict:
        if rec["status"] != "pending":
            return wire.video_object(rec, rec["status"], 100 if rec["status"] == "completed" else 0)
        if rec.get("stream_id") is None:
            return wire.video_object(rec, "queued", 0)
        try:
            stream = await self.transport.status(rec["stream_id"])
        except Refused:
            stream = None
        if stream is not None and stream["state"] not in FINAL:
            done = min(99, 100 * stream["chunks"] // max(1, rec["job"]["chunks"]))
            return wire.video_object(rec, wire.STATUS[stream["state"]], done)
        later = await self.store.get(rec["id"])  # the stream's finish hook may have stored it meanwhile
        if later is not None and later["status"] == "pending":
            why = "its stream is no longer known to this server" if stream is None else \
                stream.get("error") or f"its stream ended {stream['state']}" + (f": {stream['reason']}" if stream.get("reason") else "")
            await self.store.fail(rec["id"], "stream_lost" if stream is None else f"stream_{stream['state']}", why)
            later = await self.store.get(rec["id"])
        if later is None:
            raise not_found(rec["id"])
        return await self._object(later)

    async def page(self, after: str | None, limit: str | None, order: str | None) -> dict:
        count = 20 if limit is None else limit
        if isinstance(count, str):
            count = int(count) if count.isdigit() else -1
        if not 1 <= count <= 100:
            raise bad(f"limit must be a whole number from 1 to 100, got {str(limit)[:20]!r}", "limit")
        if (order or "desc") not in ("asc", "desc"):
            raise bad(f"order must be asc or desc, got {order[:20]!r}", "order")
        recs, more = await self.store.page(after, count, order or "desc")
        return wire.list_page([await self._object(r) for r in recs], more)

    async def delete(self, video_id: str) -> dict:
        rec = await self.store.get(video_id)
        if rec is None:
            raise not_found(video_id)
        if rec["status"] == "pending" and rec.get("stream_id"):
            try:
                await self.transport.cancel(rec["stream_id"])  # a running one stops after its current chunk
            except Refused:
                pass  # its stream has gone already
        if not await self.store.delete(video_id):
            raise not_found(video_id)
        return wire.deleted(video_id)

    async def content(self, video_id: str, variant: str | None) -> tuple[Path | bytes, str, str]:
        """(the file or its bytes, its media type, a file name)."""
        variant = variant or "video"
        if variant not in VARIANTS:
            raise bad(f"variant must be one of {sorted(VARIANTS)}, got {variant[:40]!r}", "variant")
        obj = await self.retrieve(video_id)
        if obj["status"] != "completed":
            why = "it has no content" if obj["status"] == "failed" else "its content is ready once it has completed"
            raise V1Error(409, f"video {video_id} is {obj['status']}: {why}", "video_id", f"video_{obj['status']}")
        data = await self.store.content(video_id, variant)
        if data is None:
            raise not_found(video_id)
        name, kind = VARIANTS[variant]
        return data, kind, f"{video_id}-{name}"

    def models(self) -> dict:
        return wire.models(self.options.model, self.started)


def video_reference(form: Form) -> str:
    """The id of the video to extend: ``{"video": {"id": ...}}`` in JSON, or the form field ``video[id]``."""
    value = form.fields.get("video")
    if isinstance(value, dict) and set(value) == {"id"} and isinstance(value["id"], str):
        return value["id"]
    if isinstance(form.fields.get("video[id]"), str):
        return form.fields["video[id]"]
    raise bad("video is required: {\"id\": \"video_...\"} (in a form, the field video[id]), or an uploaded mp4",
              "video", "missing_required_parameter")


def stream_record(rec: dict) -> dict:
    """A video's stream as the transports take it: the fields of ``protocol.plan``'s record (a bounded stream) and the
    job, which the engine side runs (``jobs.open_video``)."""
    job = {**rec["job"], "stand_in": rec["stand_in"]}
    return {"prompt": "" if rec["prompt_embeds"] else rec["prompt"], "prompt_embeds": rec["prompt_embeds"],
            "frames": rec["frames"], "height": rec["height"], "width": rec["width"], "schedule": rec["schedule"],
            "seed": rec["seed"], "live": False, "duration": None, "video_id": rec["id"], "v1": job}
