"""What a stream needs to go on from a chunk boundary, as one object that can be saved, loaded and resumed.

Without the rings it is small: the clean latents of the frames the next chunk attends besides its own (the anchor and
the window before it, at the high resolution: the low-res ring is rebuilt from them by area downsampling), the noise
generator's state, the chunk counter, the prompt embeddings and the decoder's causal state. Resuming re-encodes those
frames at t=0 under the (new) prompt, exactly as a prompt switch with re-cache does (``cache.recache``), so resuming
with new embeddings equals the uninterrupted stream with ``set_prompt(new, recache=True)`` at that boundary.

With the rings (``include_cache=True``) it also holds every resolution's K/V cache and the whole latent ring: resuming
with the same prompt then continues bit for bit, without a re-cache, at the rings' size.

``save`` writes one safetensors file: the tensors, and the rest as JSON in the file's metadata. Never a pickle.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .denoise.schedules import Schedule

STATE_FORMAT = 1
METADATA_KEY = "histream_stream_state"


class StreamStateError(ValueError):
    """A stream state that cannot be read, or cannot be resumed on this engine."""


@dataclass
class DecoderState:
    """A decoder's causal history, as its ``state_tensors`` gives it."""

    name: str  # the decoder's name ("wan", "taehv"): a state resumes only on the same kind
    tensors: dict[str, torch.Tensor]
    meta: dict


@dataclass
class StreamState:
    next_chunk: int  # the boundary: the chunk the stream runs next
    chunk_size: int  # latent frames per chunk (M)
    height: int  # the video's size in pixels (the high resolution)
    width: int
    num_chunks: int | None  # chunks of the request this state comes from; None: a live stream
    schedule: Schedule
    seed: int  # the request's seed (the generator's state below is what resumes)
    context_frames: list[int]  # latent frame index of each frame in ``latents``: what ``next_chunk`` attends besides itself
    latents: torch.Tensor  # [B, 16, n, h, w] float32: those frames' clean latents, high resolution
    generator: torch.Tensor  # uint8: the noise generator's state (torch.Generator.get_state)
    generator_device: str  # "cpu" or "cuda": a state resumes on a generator of the same kind
    prompt_embeds: torch.Tensor  # [B, L, text_dim]: the prompt the stream was running under
    model: dict  # what the stream ran on: the DiT's config and dtype, and a fingerprint of its weights
    decoder: DecoderState | None = None  # None where the stream decoded nothing
    rings: dict[str, list[torch.Tensor]] | None = None  # resolution -> the ring cache's storage tensors
    latent_ring: torch.Tensor | None = None  # [B, 16, slots, h, w] float32: every ring slot's clean latents

    @property
    def batch(self) -> int:
        return self.latents.shape[0]

    @property
    def has_rings(self) -> bool:
        return self.rings is not None

    def nbytes(self) -> dict[str, int]:
        """Bytes by part, as saved (tensors only; the JSON is a few KB)."""
        size = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
        parts = {"latents": size([self.latents]), "prompt_embeds": size([self.prompt_embeds]),
                 "generator": size([self.generator]),
                 "decoder": size(self.decoder.tensors.values()) if self.decoder else 0,
                 "rings": size([t for ts in (self.rings or {}).values() for t in ts])
                 + (size([self.latent_ring]) if self.latent_ring is not None else 0)}
        return {**parts, "total": sum(parts.values())}

    def to(self, device) -> "StreamState":
        """A copy with every tensor on ``device`` (the generator's state stays a CPU byte tensor, as torch keeps it)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        decoder = None if self.decoder is None else DecoderState(
            self.decoder.name, {k: t.to(device) for k, t in self.decoder.tensors.items()}, self.decoder.meta)
        rings = None if self.rings is None else {k: [t.to(device) for t in ts] for k, ts in self.rings.items()}
        return dataclasses.replace(self, latents=move(self.latents), prompt_embeds=move(self.prompt_embeds),
                                   decoder=decoder, rings=rings, latent_ring=move(self.latent_ring))

    def _parts(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Every tensor (on the CPU, contiguous) and the rest as the safetensors metadata: what ``save`` and
        ``to_bytes`` write."""
        tensors = {"latents": self.latents, "generator": self.generator, "prompt_embeds": self.prompt_embeds}
        if self.decoder is not None:
            tensors |= {f"decoder/{k}": t for k, t in self.decoder.tensors.items()}
        for name, storage in (self.rings or {}).items():
            tensors |= {f"ring/{name}/{i}": t for i, t in enumerate(storage)}
        if self.latent_ring is not None:
            tensors["latent_ring"] = self.latent_ring
        meta = {"format": STATE_FORMAT, "next_chunk": self.next_chunk, "chunk_size": self.chunk_size, "height": self.height,
                "width": self.width, "num_chunks": self.num_chunks, "schedule": self.schedule.to_dict(),
                "seed": self.seed, "context_frames": self.context_frames, "generator_device": self.generator_device,
                "model": self.model, "rings": {k: len(v) for k, v in (self.rings or {}).items()} if self.rings else None,
                "decoder": None if self.decoder is None else {"name": self.decoder.name, "meta": self.decoder.meta}}
        return {k: t.detach().contiguous().cpu() for k, t in tensors.items()}, {METADATA_KEY: json.dumps(meta)}

    def save(self, path: str | Path) -> Path:
        """One safetensors file: every tensor, and the rest as JSON in its metadata. Written beside and renamed into
        place, so a reader never sees half a state."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial")
        tensors, metadata = self._parts()
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
        return path

    def to_bytes(self) -> bytes:
        """What ``save`` writes, as bytes (a server's checkpoint, sent between processes; ``stream_state_from_bytes``)."""
        from safetensors.torch import save

        tensors, metadata = self._parts()
        return save(tensors, metadata=metadata)


def load_stream_state(path: str | Path) -> StreamState:
    """A state ``StreamState.save`` wrote, on the CPU (``Engine.resume`` moves it to the model's device)."""
    path = Path(path)
    if not path.is_file():
        raise StreamStateError(f"stream state {path} does not exist" if not path.exists() else f"stream state {path} is not a file")
    return stream_state_from_bytes(path.read_bytes(), str(path))


def stream_state_from_bytes(data: bytes, source: str = "the checkpoint") -> StreamState:
    """A state ``StreamState.to_bytes`` (or ``save``) wrote, on the CPU; ``source`` names it in errors."""
    from safetensors.torch import load

    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
        # fresh allocations: the tensors of a loaded file can sit at any byte offset, and a CPU matmul over a misaligned
        # operand may round differently (cross-attention K/V 1 ulp off), which a bit-exact resume must not see
        tensors = {k: t.clone() for k, t in load(data).items()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own kinds for bytes that are not a file of its
        raise StreamStateError(f"{source} is not a stream state (not a safetensors file: {exc})") from exc
    if METADATA_KEY not in header:
        raise StreamStateError(f"{source} is a safetensors file but not a stream state (no {METADATA_KEY!r} metadata)")
    try:
        meta = json.loads(header[METADATA_KEY])
        return _from_parts(meta, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise StreamStateError(f"{source} holds a damaged stream state: {exc}") from exc


def _from_parts(meta: dict, tensors: dict[str, torch.Tensor]) -> StreamState:
    if meta.get("format") != STATE_FORMAT:
        raise StreamStateError(f"stream state format {meta.get('format')!r}; this histream_engine reads format {STATE_FORMAT}")
    decoder = None
    if meta["decoder"] is not None:
        decoder = DecoderState(meta["decoder"]["name"], {k[len("decoder/"):]: t for k, t in tensors.items() if k.startswith("decoder/")},
                               meta["decoder"]["meta"])
    rings = None
    if meta["rings"]:
        rings = {name: [tensors[f"ring/{name}/{i}"] for i in range(count)] for name, count in meta["rings"].items()}
    return StreamState(
        next_chunk=int(meta["next_chunk"]), chunk_size=int(meta["chunk_size"]), height=int(meta["height"]),
        width=int(meta["width"]), num_chunks=meta["num_chunks"], schedule=Schedule.from_dict(meta["schedule"]),
        seed=int(meta["seed"]), context_frames=[int(f) for f in meta["context_frames"]], latents=tensors["latents"],
        generator=tensors["generator"], generator_device=meta["generator_device"], prompt_embeds=tensors["prompt_embeds"],
        model=meta["model"], decoder=decoder, rings=rings, latent_ring=tensors.get("latent_ring"))


def state_nbytes(model_config, dtype: torch.dtype, height: int, width: int, sched: Schedule, chunk_size: int = 3,
                 batch: int = 1, prompt_rows: int | None = None, kv_dtype: torch.dtype | None = None,
                 generator_device: str = "cuda", decoder_bytes: int = 0) -> dict[str, int]:
    """Bytes of a steady-state ``StreamState`` (the window full) without and with its rings, by part, counted with the
    very caches a stream allocates (built on the meta device: no memory, no arithmetic), for an 81-frame video (a
    sliding window's rings do not depend on the length; a full history's hold all 21 latent frames). ``decoder_bytes``:
    the decoder's state (``VideoDecoder.state_nbytes``), not counted here. A full-history schedule resumes only with
    its rings, so its ``without_rings`` is None."""
    from .cache.resolution import build_resolution
    from .video_request import video_shape

    shape = video_shape(batch, 81, height, width, chunk_size, sched, model_config.patch_size)
    plan = sched.window_plan(chunk_size, shape.latent_frames)
    steady = plan.slots + 2  # a chunk far enough in that its window is full
    context = len(plan.visible_frames(steady)) - chunk_size
    item = torch.empty((), dtype=dtype).element_size()
    rows = model_config.text_len if prompt_rows is None else prompt_rows
    generator = 16 if generator_device == "cuda" else 5056  # torch's Philox offset and seed; the CPU's Mersenne twister
    latent = batch * model_config.out_dim * shape.latent_height * shape.latent_width * 4
    runner = type("OneProcess", (), {"head_shards": 1, "rotate_keys": True})
    used = ("low", "high") if sched.uses_low else ("high",)
    rings = sum(build_resolution(n, model_config, dtype, "meta", batch, shape.latent_hw, sched, plan, runner,
                                 kv_dtype).cache.nbytes for n in used)
    windowed = sched.window == "anchor"  # a full history keeps no latent ring: its state's frames are in the rings
    without = {"latents": context * latent if windowed else 0, "prompt_embeds": batch * rows * model_config.text_dim * item,
               "generator": generator, "decoder": decoder_bytes}
    with_rings = dict(without, rings=rings + (plan.slots * latent if windowed else 0))
    return {"without_rings": sum(without.values()) if windowed else None,
            "with_rings": sum(with_rings.values()), **{f"part_{k}": v for k, v in with_rings.items()}}
