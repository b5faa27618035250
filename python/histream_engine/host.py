"""The Python half of the C++ host API (``engine/``): what ``histream::Engine`` calls through ``pybind11::embed``.

Every check a host request needs happens here, in Python, so a C++ host gets the same messages as a Python user;
the C++ side only moves the results across. Each chunk's frames are handed over as one C-contiguous uint8 numpy
array in host memory: a view of the decoded tensor on a CPU, its device-to-host copy on a GPU, and never copied
again (the C++ callback reads that array's buffer; ``to_uint8_frames`` makes them contiguous on the device).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .demo import tiny_demo_engine
from .runtime import ChunkResult, Engine, EngineConfig
from .text_encoder import load_prompt_embeds
from .video import Mp4Writer

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

HostChunk = tuple[int, np.ndarray, float, float]  # index, frames [T, H, W, 3] uint8, denoise s, VAE s


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


class HostEngine:
    """An engine with a VAE, and the prompt it falls back on (the tiny demo's random one) when a request gives none."""

    def __init__(self, engine: Engine, default_prompt: torch.Tensor | None = None):
        if engine.vae is None:
            raise ValueError("a host engine needs a VAE: hosts receive decoded frames")
        self.engine = engine
        self.default_prompt = default_prompt

    def _prompt(self, prompt: str, prompt_embeds_path: str) -> torch.Tensor:
        if prompt and prompt_embeds_path:
            raise ValueError("give either a prompt or prompt_embeds_path, not both")
        if prompt_embeds_path:
            return load_prompt_embeds(Path(prompt_embeds_path), self.engine.dit.config.text_dim)
        if prompt:
            encoder = getattr(self.engine, "text_encoder", None)
            if encoder is None:
                raise ValueError("this engine has no text encoder (the tiny demo model has none, or it was opened with "
                                 "text_encoder off): pass prompt_embeds_path instead of a prompt")
            return encoder.encode(prompt)
        if self.default_prompt is None:
            raise ValueError("the request has neither a prompt nor prompt_embeds_path")
        return self.default_prompt

    def results(self, prompt: str, prompt_embeds_path: str, frames: int, height: int, width: int, schedule: str,
                seed: int) -> Iterator[tuple[ChunkResult, np.ndarray]]:
        """Checks the request now (``Engine.stream`` checks before the first chunk), then yields each chunk's result
        and its frames ``[T, H, W, 3]`` uint8 in host memory. Closing it closes the engine's stream at once."""
        embeds = self._prompt(prompt, prompt_embeds_path)
        device = next(self.engine.dit.parameters()).device
        chunks = self.engine.stream(embeds[:1].to(device), frames, height, width, schedule=schedule, seed=seed)
        return self._with_frames(chunks)

    @staticmethod
    def _with_frames(chunks) -> Iterator[tuple[ChunkResult, np.ndarray]]:
        try:
            for c in chunks:
                yield c, c.frames[0].cpu().numpy()  # [T, H, W, 3] uint8: a view on a CPU, the D2H copy on a GPU
        finally:
            chunks.close()  # a cancelled stream lets go of its caches at once

    def stream(self, prompt: str, prompt_embeds_path: str, frames: int, height: int, width: int, schedule: str,
               seed: int) -> Iterator[HostChunk]:
        """``results`` as the C++ host takes them: (index, frames, denoise s, VAE s)."""
        results = self.results(prompt, prompt_embeds_path, frames, height, width, schedule, seed)
        # closing this drops the last reference to ``results``, whose finalizer closes the engine's stream
        return ((c.index, f, c.seconds, c.vae_seconds) for c, f in results)


def open_engine(model_dir: str, checkpoint: str, dtype: str, device: str, attention: str, cuda_graphs: bool,
                text_encoder: bool, tae_path: str = "") -> HostEngine:
    """``tae_path`` (taew2_1.pth): decode with TAEHV instead of the folder's Wan VAE."""
    if not model_dir:
        raise ValueError("EngineOptions.model_dir is empty: name a Wan2.1 folder (or use Engine::tiny_demo)")
    config = EngineConfig(attention=attention, cuda_graphs=cuda_graphs)
    engine = Engine.from_pretrained(model_dir, checkpoint=checkpoint or None, dtype=_dtype(dtype), device=device or None,
                                    config=config, text_encoder=text_encoder, vae="tae" if tae_path else "wan",
                                    tae_path=tae_path or None)
    return HostEngine(engine)


def tiny_demo(device: str, attention: str, seed: int, decoder: str = "wan") -> HostEngine:
    engine, prompt = tiny_demo_engine(EngineConfig(attention=attention), seed=seed, device=device or "cpu", decoder=decoder)
    return HostEngine(engine, prompt)


def video_writer(path: str, width: int, height: int) -> Mp4Writer:
    return Mp4Writer(path, width, height)


def write_frames(writer: Mp4Writer, frames: np.ndarray) -> None:
    """``frames`` ``[T, H, W, 3]`` uint8, as a C++ host holds them."""
    writer.write(torch.from_numpy(frames))
