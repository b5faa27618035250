"""What runs where the engine is (plain serve's worker, a Ray replica): a /v1 video's stream opened from its record,
and what the stream made handed to the store when it ends (the session's ``finish``).

A video's record (``service.stream_record``) carries ``video_id`` and ``v1``, the job: a new video (``stream_frames``
frames, conditioned on its ``input_reference`` image or on the last ``clip_frames`` frames of an uploaded mp4), or an
extension that resumes the extended video's final state for ``chunks`` chunks under the new prompt
(``Engine.resume``: exactly a ``set_prompt(new, recache=True)`` at that video's end). The store it reads the inputs
from and hands the result to is a ``VideoStore`` in this process, or the store actor over Ray (``EngineStore``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Protocol

from ...demo import stand_in_prompt
from ...host import HostEngine, HostStream
from ...runtime.denoise.schedules import resolve_schedule
from ...runtime.stream_state import load_stream_state
from ..embeddings import EmbeddingsDir
from . import media


class EngineStore(Protocol):
    def job_inputs(self, video_id: str) -> dict[str, bytes]: ...

    def complete(self, video_id: str, mp4, state: bytes | None) -> None: ...

    def fail(self, video_id: str, code: str, message: str) -> None: ...


def prompt_embeds(host: HostEngine, req: dict, embeds: EmbeddingsDir):
    """The prompt as embeddings ``[1, L, text_dim]`` on the model's device: an --embeds-dir file, the demo's stand-in
    for its text, or the text through the engine's encoder (the engine's one prompt check refuses what it must)."""
    if req["prompt_embeds"]:
        prompt = host.prompt_embeds("", embeds.path(req["prompt_embeds"]))
    elif req["v1"]["stand_in"]:
        config = host.engine.dit.config
        prompt = stand_in_prompt(req["prompt"], config.text_len, config.text_dim)
    else:
        prompt = host.prompt_embeds(req["prompt"], "")
    return prompt.to(next(host.engine.dit.parameters()).device)


def open_video(host: HostEngine, req: dict, store: EngineStore, embeds: EmbeddingsDir) -> HostStream:
    """The video's stream, checked by the engine (not started)."""
    job = req["v1"]
    inputs = store.job_inputs(req["video_id"])
    prompt = prompt_embeds(host, req, embeds)
    if job["resume"]:
        return HostStream(host, host.engine.resume(state_from(inputs["resume.safetensors"]), prompt, job["chunks"]))
    context = None
    if job["context"] == "image":
        context = media.as_pixels(media.read_image(inputs["reference.png"], "input_reference"))  # [3, H, W]
    elif job["context"] == "clip":
        context = media.as_pixels(clip(inputs["source.mp4"], job["clip_frames"]))  # [3, T, H, W]
    return HostStream(host, host.engine.stream(prompt, job["stream_frames"], req["height"], req["width"],
                                               resolve_schedule(req["schedule"]), seed=req["seed"], context=context))


def state_from(data: bytes):
    with tempfile.TemporaryDirectory(prefix="histream-state-") as tmp:
        path = Path(tmp) / "state.safetensors"
        path.write_bytes(data)
        return load_stream_state(path)


def clip(mp4: bytes, frames: int):
    """The last ``frames`` frames of an uploaded mp4, ``[T, H, W, 3]`` uint8."""
    with tempfile.TemporaryDirectory(prefix="histream-clip-") as tmp:
        path = Path(tmp) / "source.mp4"
        path.write_bytes(mp4)
        return media.last_frames(path, frames)


def outcome(end: dict, mp4: Path | bytes | None, state: bytes | None) -> tuple[str, tuple]:
    """What the store is told when a /v1 video's stream ended (``end``, its final event): ``("complete", (mp4,
    state))`` for a done one (its final state: its last checkpoint, without rings; None where it keeps none, a
    full-history schedule), else ``("fail", (code, message))`` with the reason."""
    if end["type"] == "done" and mp4 is not None:
        return "complete", (mp4, state)
    if end["type"] == "cancelled":
        return "fail", ("cancelled", f"its stream was cancelled{': ' + end['reason'] if end.get('reason') else ''}")
    return "fail", ("generation_failed", end.get("error") or "its stream failed")


def hand_over(store: EngineStore, video_id: str, end: dict, mp4: Path | bytes | None, state: bytes | None) -> None:
    """``outcome`` told to a store in this process."""
    name, args = outcome(end, mp4, state)
    getattr(store, name)(video_id, *args)
