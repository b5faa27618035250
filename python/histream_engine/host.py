"""The Python half of the C++ host API (``engine/``): what ``histream::Engine`` calls through ``pybind11::embed``.

Every check a host request needs happens here, in Python, so a C++ host gets the same messages as a Python user;
the C++ side only moves the results across. Each chunk's frames are handed over as one C-contiguous uint8 numpy
array in host memory: a view of the decoded tensor on a CPU, its device-to-host copy on a GPU, and never copied
again (the C++ callback reads that array's buffer; ``to_uint8_frames`` makes them contiguous on the device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .demo import tiny_demo_engine
from .output_paths import check_output_file
from .runtime import ChunkResult, Engine, EngineConfig
from .runtime.request_checks import check_prompt_embeds, resolve_device
from .runtime.denoise.schedules import resolve_schedule
from .runtime.stream_state import StreamState, load_stream_state
from .taehv_checkpoint import load_taehv
from .text_encoder import load_prompt_embeds
from .video import Mp4Writer

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

HostChunk = tuple[int, np.ndarray, float, float]  # index, frames [T, H, W, 3] uint8, denoise s, VAE s
HostSwitch = tuple[bool, int, float]  # a prompt switch as the chunk after it reports it: recache, extra forwards, seconds
HostStreamChunk = tuple[int, np.ndarray, float, float, HostSwitch | None]  # a HostChunk and the switch that preceded it


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class EngineOptions:
    """How a host opens an engine on a model folder (``open_engine``; the C++ ``histream::EngineOptions``)."""

    model_dir: str  # a Wan2.1 folder or a diffusers layout
    checkpoint: str = ""  # causal DiT weights replacing the folder's (a Self-Forcing / HiStream .pt)
    dtype: str = "bfloat16"  # bfloat16, float16 or float32
    device: str = ""  # "cuda", "cuda:1", "cpu"; empty: cuda if available, else cpu
    attention: str = "torch"  # an attention backend name
    cuda_graphs: bool = False  # replay steady-state chunks as CUDA graphs (CUDA only)
    text_encoder: bool = True  # load UMT5 for text prompts; off: prompt embeddings files only
    tae_path: str = ""  # taew2_1.pth / .safetensors: decode with TAEHV instead of the folder's Wan VAE

    def __post_init__(self):
        if not self.model_dir:
            raise ValueError("EngineOptions.model_dir is empty: name a Wan2.1 folder (or use Engine::tiny_demo)")
        for name in ("cuda_graphs", "text_encoder"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"EngineOptions.{name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class HostRequest:
    """One stream a host asks for (the C++ ``histream::StreamRequest``): a prompt (text or an embeddings file, or neither
    for an engine with a default prompt), its size and schedule; ``live`` runs until closed, with no frame count."""

    prompt: str = ""
    prompt_embeds_path: str = ""
    frames: int | None = 45  # 4k+1, with (frames - 1) / 4 + 1 divisible by the chunk size; None when live
    height: int = 256
    width: int = 256
    schedule: str = "histream"
    seed: int = 0
    live: bool = False  # an unbounded stream on the schedule with window positions: it runs until closed
    context: torch.Tensor | None = None  # given frames (runtime.context): an image [3, H, W] or a clip [3, T, H, W] in [-1, 1]

    def __post_init__(self):
        if not isinstance(self.live, bool):
            raise TypeError(f"live must be true or false, got {self.live!r}")
        if self.live and self.frames is not None:
            raise ValueError(f"a live stream has no frame count, but frames={self.frames!r} was given: drop frames, or "
                             "drop live for a video of that many frames")
        if not self.live and self.frames is None:
            raise ValueError("give frames (4k+1, e.g. 45), or live for a stream that runs until closed")
        if self.prompt and self.prompt_embeds_path:
            raise ValueError("give either a prompt or prompt_embeds_path, not both")


def request_schedule(request: HostRequest):
    """The schedule a request runs on: a live one's with window positions (its RoPE range stays the trained one)."""
    sched = resolve_schedule(request.schedule)
    return sched.replace(positions="window") if request.live else sched


class HostEngine:
    """An engine with a VAE, and the prompt it falls back on (the tiny demo's random one) when a request gives none."""

    def __init__(self, engine: Engine, default_prompt: torch.Tensor | None = None):
        if engine.vae is None:
            raise ValueError("a host engine needs a VAE: hosts receive decoded frames")
        self.engine = engine
        self.default_prompt = default_prompt

    def _prompt(self, prompt: str, prompt_embeds_path: str) -> torch.Tensor:
        """The prompt a request names, as embeddings ``[B, L, text_dim]`` checked by the engine's one prompt check."""
        if prompt and prompt_embeds_path:
            raise ValueError("give either a prompt or prompt_embeds_path, not both")
        if prompt_embeds_path:
            embeds = load_prompt_embeds(Path(prompt_embeds_path), self.engine.dit.config.text_dim)
        elif prompt:
            encoder = getattr(self.engine, "text_encoder", None)
            if encoder is None:
                raise ValueError("this engine has no text encoder (the tiny demo model has none, or it was opened without "
                                 "one): give prompt embeddings instead of a prompt")
            embeds = encoder.encode(prompt)
        elif self.default_prompt is None:
            raise ValueError("the request has neither a prompt nor prompt embeddings")
        else:
            embeds = self.default_prompt
        return check_prompt_embeds(embeds, self.engine.dit.config.text_dim, max_batch=1)

    def prompt_embeds(self, prompt: str, prompt_embeds_path: str) -> torch.Tensor:
        """A text prompt or an embeddings file as the engine takes it (``[1, L, text_dim]``, checked), on the CPU or the
        encoder's device: for a caller that opens its engine stream itself (serve's /v1 videos)."""
        return self._prompt(prompt, prompt_embeds_path)

    def results(self, request: HostRequest) -> "HostStream":
        """Checks the request now (``Engine.stream`` checks before the first chunk), then yields each chunk's result
        and its frames ``[T, H, W, 3]`` uint8 in host memory. A live request runs until closed, on the schedule with
        ``positions='window'``. Closing it closes the engine's stream at once."""
        embeds, num_frames, height, width, sched = self.stream_args(request)
        return HostStream(self, self.engine.stream(embeds, num_frames, height, width, sched, seed=request.seed,
                                                   context=request.context))

    def stream_args(self, request: HostRequest) -> tuple:
        """``Engine.stream``'s positional arguments for a host request: the prompt resolved to embeddings on the model's
        device, and a live request turned into ``num_frames=None`` on the schedule with window positions. A
        sequence-parallel host resolves them once, on its first rank, and hands the very same arguments to every rank."""
        embeds = self._prompt(request.prompt, request.prompt_embeds_path)
        device = next(self.engine.dit.parameters()).device
        return embeds.to(device), request.frames, request.height, request.width, request_schedule(request)

    def stream(self, request: HostRequest) -> Iterator[HostChunk]:
        """``results`` as the C++ host's callback form takes them: (index, frames, denoise s, VAE s)."""
        return self._callback_chunks(self.results(request))

    @staticmethod
    def _callback_chunks(results: "HostStream") -> Iterator[HostChunk]:
        try:
            for c, f in results:
                yield c.index, f, c.seconds, c.vae_seconds
        finally:
            results.close()  # a cancel from the host closes the engine's stream at once

    def open(self, request: HostRequest) -> "HostStream":
        """A stream handle a C++ host steers from its own loop (``next_chunk``, ``set_prompt``, ``close``)."""
        return self.results(request)

    def resume(self, state_path: str, prompt: str = "", prompt_embeds_path: str = "", chunks: int | None = None) -> "HostStream":
        """A stream handle going on from a state file (``HostStream.save_state``; ``Engine.resume``): under the state's
        prompt unless a new one is given (then its attended frames are re-encoded under it first), for ``chunks`` more
        chunks (None: what the state's request had left; a live stream until closed)."""
        return self.resume_state(load_stream_state(state_path), prompt, prompt_embeds_path, chunks)

    def resume_state(self, state: StreamState, prompt: str = "", prompt_embeds_path: str = "",
                     chunks: int | None = None) -> "HostStream":
        """``resume`` from a ``StreamState`` in memory (a server's checkpoint, sent between processes as bytes)."""
        embeds = self._prompt(prompt, prompt_embeds_path) if (prompt or prompt_embeds_path) else None
        return HostStream(self, self.engine.resume(state, embeds, chunks))


class HostStream:
    """One engine stream for a host: iterates (ChunkResult, frames ``[T, H, W, 3]`` uint8), switches prompts, closes."""

    def __init__(self, host: HostEngine, chunks):
        self.host, self.chunks = host, chunks
        self._iter = self._with_frames()

    def __iter__(self):
        return self._iter

    def __next__(self):
        return next(self._iter)

    def _with_frames(self) -> Iterator[tuple[ChunkResult, np.ndarray]]:
        try:
            for c in self.chunks:
                yield c, c.frames[0].cpu().numpy()  # [T, H, W, 3] uint8: a view on a CPU, the D2H copy on a GPU
        finally:
            self.chunks.close()  # a cancelled stream lets go of its caches at once

    def next_chunk(self) -> HostStreamChunk | None:
        """The next chunk as the C++ host takes it, or None once the stream has ended (or was closed)."""
        try:
            c, frames = next(self._iter)
        except StopIteration:
            return None
        s = c.prompt_switch
        switch = None if s is None else (s.recache, sum(s.forwards.values()), s.seconds)
        return c.index, frames, c.seconds, c.vae_seconds, switch

    def set_prompt(self, prompt: str, prompt_embeds_path: str, recache: bool = True) -> None:
        """Switch to a text prompt or an embeddings file at the next chunk boundary (``VideoStream.set_prompt``)."""
        if not prompt and not prompt_embeds_path:
            raise ValueError("a prompt switch needs a prompt or prompt embeddings")
        self.chunks.set_prompt(self.host._prompt(prompt, prompt_embeds_path), recache=recache)

    def state(self, include_cache: bool = False) -> StreamState:
        """The stream's state at its boundary (``VideoStream.state``): between chunks, or once it ended. A decode still
        in flight is finished first, and its chunk is the next this handle hands out; so a server that keeps the state
        as a checkpoint keeps it once every chunk before ``state.next_chunk`` is out."""
        return self.chunks.state(include_cache)

    def save_state(self, path: str, include_cache: bool = False) -> str:
        """The stream's state at its boundary, saved to ``path`` (``.safetensors``): ``VideoStream.state``, whose
        boundary comes after every chunk this handle hands out before its next new one."""
        out = check_output_file(path, (".safetensors",))
        return str(self.state(include_cache).save(out))

    def close(self) -> None:
        self._iter.close()
        self.chunks.close()


def _config(parallel_group, **settings) -> EngineConfig:
    if parallel_group is None:
        return EngineConfig(**settings)
    return EngineConfig(**settings, parallel="ulysses", group=parallel_group)


def open_engine(options: EngineOptions, *, parallel_group=None) -> HostEngine:
    """An engine on ``options.model_dir``. ``parallel_group`` (a torch.distributed ProcessGroup): this engine is one rank
    of a sequence-parallel group (every rank opens it)."""
    if not isinstance(options, EngineOptions):
        raise TypeError(f"open_engine takes an EngineOptions, got {type(options).__name__}")
    config = _config(parallel_group, attention=options.attention, cuda_graphs=options.cuda_graphs)
    engine = Engine.from_pretrained(options.model_dir, checkpoint=options.checkpoint or None, dtype=_dtype(options.dtype),
                                    device=options.device or None, config=config, text_encoder=options.text_encoder,
                                    vae="tae" if options.tae_path else "wan", tae_path=options.tae_path or None)
    return HostEngine(engine)


def tiny_demo(device: str = "cpu", attention: str = "torch", seed: int = 0, decoder: str = "wan", tae_path: str = "", *,
              encoder: bool = False, parallel_group=None) -> HostEngine:
    """The demo model; ``decoder="tae"``: its embedded tiny TAEHV (random weights); ``tae_path``: a taew2_1 file's
    TAEHV decoding the tiny DiT's latents (both are Wan 2.1's 16-channel latent space). ``parallel_group``: as
    ``open_engine``'s. ``encoder``: the decoder comes with its encoder (context frames: an image, a clip)."""
    if tae_path and decoder != "wan":
        raise ValueError("give either the embedded tiny TAEHV (decoder 'tae') or a taew2_1 file (tae_path), not both")
    dev = resolve_device(device or "cpu")
    tae = load_taehv(tae_path, device=dev) if tae_path else None  # before the model: a bad path fails fast
    engine, prompt = tiny_demo_engine(_config(parallel_group, attention=attention), seed=seed, device=dev, decoder=decoder,
                                      encoder=encoder)
    if tae is not None:
        engine = Engine(engine.dit, engine.config, vae=tae)
    return HostEngine(engine, prompt)


def check_output(path: str, suffix: str, make_parents: bool) -> None:
    """A C++ host's output check before any model work (``check_output_file``); without ``make_parents`` the parent
    folder must exist too."""
    check_output_file(path, (suffix,) if suffix else (), make_parents=make_parents)


def video_writer(path: str, width: int, height: int) -> Mp4Writer:
    return Mp4Writer(check_output_file(path, (".mp4",)), width, height)


def write_frames(writer: Mp4Writer, frames: np.ndarray) -> None:
    """``frames`` ``[T, H, W, 3]`` uint8, as a C++ host holds them."""
    writer.write(torch.from_numpy(frames))
