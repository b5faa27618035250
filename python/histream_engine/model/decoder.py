"""What the runtime needs of a video decoder: the one interface both the Wan VAE and TAEHV implement.

The engine, ``ChunkDecoder``, the host, serve and the bench hold a decoder only through these members, never
through a model's internals, so either decoder can be passed wherever a VAE goes.

Beside decoding: an encoder (for frames given as context), and a stream's decoding history as plain tensors
keyed by module name plus a small JSON-able dict (for stream states saved to disk with safetensors and JSON).
The checks and the meta-tensor accounting that both decoders share live here too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

# Both decoders keep the Wan VAE's compression: 4x in time (the first latent frame decodes to one video frame, each
# later one to 4), 8x in each spatial direction.
VAE_TIME_STRIDE = 4
VAE_SPACE_STRIDE = 8


class EncoderNotLoadedError(RuntimeError):
    """``encode`` on a decoder loaded without its encoder; the message names the call that loads it."""


@runtime_checkable
class VideoDecoder(Protocol):
    name: str  # "wan" or "taehv": shown by the CLI, the serve page and the bench

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def latent_channels(self) -> int: ...

    @property
    def has_encoder(self) -> bool:
        """Whether ``encode`` works: the encoder is loaded only when asked for (``encoder=True``)."""

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, 4k+1, H, W]`` in [-1, 1], H and W multiples of 8 -> DiT-space latents
        ``[B, 16, k+1, H/8, W/8]`` (what ``decode`` takes). Raises ``EncoderNotLoadedError`` without an encoder."""

    def new_state(self) -> Any:
        """A fresh streaming history for one video."""

    def decode(self, latents: torch.Tensor, state: Any = None) -> torch.Tensor:
        """DiT-space latents ``[B, C, F, h, w]`` -> video ``[B, 3, T, 8h, 8w]`` in [-1, 1], T = 4F (4F - 3 for a
        video's first latent frames). Consecutive pieces of one video share ``state``; without one, a whole video."""

    def state_tensors(self, state: Any) -> tuple[dict[str, torch.Tensor], dict]:
        """``state`` in its saved form: tensors keyed by name (contiguous, on the decoder's device) and a JSON-able
        dict of the rest; ``load_state`` takes both back. TAEHV gives its carried frames; the Wan VAE, whose carried
        frames are gigabytes, the last latents it decoded, from which ``load_state`` rebuilds them exactly."""

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> Any:
        """The state ``state_tensors`` gave, checked key by key and shape by shape against this decoder; a state
        from another decoder, config, dtype or latent size is refused with a ``ValueError`` naming the difference."""

    def state_nbytes(self, state: Any) -> int:
        """Bytes of ``state``'s saved form (the tensors ``state_tensors`` gives)."""

    def state_shapes(self, batch: int, height: int, width: int, latent_frames: int | None = None
                     ) -> dict[str, tuple[int, ...]]:
        """The saved form's tensor names and shapes after ``latent_frames`` latent frames of ``[batch, C, F,
        height, width]`` (a latent size), decoded a chunk at a time; None: once it has stopped growing. Found
        without arithmetic."""


def check_video(video: torch.Tensor) -> int:
    """Refuse a video an encoder cannot take, saying what to change; its latent frame count otherwise."""
    if video.dim() != 5 or video.shape[1] != 3 or not video.is_floating_point():
        raise ValueError(f"video must be a float tensor [B, 3, T, H, W] of RGB in [-1, 1], got {video.dtype} "
                         f"{tuple(video.shape)}")
    frames, height, width = video.shape[2:]
    if (frames - 1) % VAE_TIME_STRIDE:
        keep = (frames - 1) // VAE_TIME_STRIDE * VAE_TIME_STRIDE + 1
        raise ValueError(f"video has {frames} frames; the encoders take 4k+1 (1, 5, 9, ..., 81): keep the first {keep}")
    s = VAE_SPACE_STRIDE
    if height % s or width % s or not height or not width:
        raise ValueError(f"video is {width}x{height} (WxH); both must be positive multiples of {s}: crop or resize it, "
                         f"e.g. to {max(width // s, 1) * s}x{max(height // s, 1) * s}")
    return (frames - 1) // VAE_TIME_STRIDE + 1


def check_stream_shape(state, latents: torch.Tensor) -> None:
    """A stream's latents keep one batch and size: the first piece sets them in ``state.latent_shape``, later pieces
    must match (a causal history of another size cannot be continued)."""
    shape = (latents.shape[0], *latents.shape[3:])  # (B, h, w)
    if state.latent_shape is None:
        state.latent_shape = shape
    elif tuple(state.latent_shape) != shape:
        B, h, w = state.latent_shape
        raise ValueError(f"this decoder state continues latents [{B}, {latents.shape[1]}, F, {h}, {w}], got "
                         f"{tuple(latents.shape)}: start another video with a new state (decoder.new_state())")


def config_json(config, leave_out: tuple[str, ...] = ()) -> dict:
    """A config dataclass as the JSON dict a saved state carries (tuples become lists, as JSON would), without the
    fields ``leave_out`` names (those that do not shape the decoder)."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in leave_out}
    return json.loads(json.dumps(fields))


def state_layout(make_twin: Callable[[], VideoDecoder], batch: int, height: int, width: int, latent_frames: int,
                 steady_after: int) -> tuple[dict[str, tuple[int, ...]], dict]:
    """What ``state_tensors`` gives after ``latent_frames`` latent frames of ``[batch, C, F, height, width]``: names
    and shapes, and the dict. A twin made on the meta device decodes them (shapes only: no memory, no arithmetic);
    past ``steady_after`` frames the shapes no longer change, so no more are decoded."""
    with torch.device("meta"):
        twin = make_twin()
    state = twin.new_state()
    if latent_frames:
        z = torch.empty(batch, twin.latent_channels, min(latent_frames, steady_after), height, width, device="meta")
        twin.decode(z, state)
        state.latent_frames = latent_frames
    tensors, meta = twin.state_tensors(state)
    return {k: tuple(v.shape) for k, v in tensors.items()}, meta


Layout = Callable[[dict], tuple[dict[str, tuple[int, ...]], dict]]  # a state's dict -> the names, shapes and dict it must have


def twin_layout(make_twin: Callable[[], VideoDecoder], steady_after: int) -> Layout:
    """The layout of a state that is what a decode leaves, found by ``state_layout`` (a twin decoding meta tensors)."""
    return lambda meta: state_layout(make_twin, *(meta["latent_shape"] or (1, 1, 1)), meta["latent_frames"], steady_after)


def check_state(decoder, tensors: dict[str, torch.Tensor], meta: dict, layout: Layout) -> None:
    """Refuse a saved state that is not this decoder's, naming what differs (decoder, config, dtype, keys, shapes).
    ``layout`` gives the names, shapes and dict the state must have, from its dict once that is known to be sound."""
    if not isinstance(meta, dict) or not {"decoder", "config", "latent_frames", "latent_shape"} <= set(meta):
        raise ValueError("not a decoder state: its dict needs decoder, config, latent_frames and latent_shape "
                         "(as state_tensors writes it)")
    if meta["decoder"] != decoder.name:
        raise ValueError(f"this state was saved by the {meta['decoder']!r} decoder; this one is {decoder.name!r}: "
                         "resume with the decoder the stream was made with")
    frames, shape = meta["latent_frames"], meta["latent_shape"]
    if not isinstance(frames, int) or frames < 0 or (frames and not (
            isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape))):
        raise ValueError(f"bad decoder state: latent_frames {frames!r} and latent_shape {shape!r} (want a count >= 0 "
                         "and [batch, h, w] once it is > 0)")
    want, want_meta = layout(meta)
    ours, theirs = want_meta["config"], meta["config"] if isinstance(meta["config"], dict) else {}
    if theirs != ours:
        diff = sorted(k for k in set(ours) | set(theirs) if theirs.get(k) != ours.get(k))
        raise ValueError(f"this state was saved by a {decoder.name} decoder of another config (differing: "
                         f"{', '.join(diff)}); resume with the decoder weights the stream was made with")
    problems = _key_problems(want, tensors)
    wrong_dtype = sorted(k for k in set(want) & set(tensors) if tensors[k].dtype != decoder.dtype)
    if wrong_dtype:
        problems.append(f"{len(wrong_dtype)} tensors not {decoder.dtype} (e.g. {wrong_dtype[0]}: "
                        f"{tensors[wrong_dtype[0]].dtype}): load the decoder in the dtype the state was saved from")
    rest = sorted(k for k in want_meta if k not in ("config", "dtype") and meta.get(k) != want_meta[k])
    problems += [f"{k}: state {meta.get(k)!r} vs expected {want_meta[k]!r}" for k in rest]
    if problems:
        where = f"latents {shape} after {frames} latent frames"
        raise ValueError(f"this {decoder.name} state does not fit this decoder ({where}):\n  " + "\n  ".join(problems))


def _key_problems(want: dict[str, tuple[int, ...]], tensors: dict[str, torch.Tensor]) -> list[str]:
    missing, unexpected = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    misshaped = sorted(f"{k}: state {tuple(tensors[k].shape)} vs expected {want[k]}"
                       for k in set(want) & set(tensors) if tuple(tensors[k].shape) != want[k])
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > 6 else ""
            problems.append(f"{label}: " + ", ".join(items[:6]) + more)
    return problems


def state_nbytes_at(decoder: VideoDecoder, batch: int, height: int, width: int,
                    latent_frames: int | None = None, dtype: torch.dtype | None = None) -> int:
    """Bytes of ``decoder``'s saved state for latents ``[batch, C, F, height, width]`` after ``latent_frames`` of them
    (None: once it has stopped growing), in ``dtype`` (the decoder's own by default). Nothing is allocated: a decoder
    made on the meta device will do."""
    item = (dtype or decoder.dtype).itemsize
    return item * sum(math.prod(s) for s in decoder.state_shapes(batch, height, width, latent_frames).values())
