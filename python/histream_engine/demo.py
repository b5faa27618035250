"""The embedded tiny models of ``histream demo`` and of the C++ host's ``Engine::tiny_demo``: random weights, nothing
downloaded, seconds on a CPU. The picture is noise; the path (chunked DiT, KV rings, streaming VAE) is the real one."""

from __future__ import annotations

import hashlib

import torch

from .model import WanDiT
from .model.taehv import TAEHV, TAEHVConfig
from .model.vae import VAEConfig, WanVAE
from .runtime import Engine, EngineConfig

PROMPT_ROWS = 12  # real rows of the random prompt; the rest is zero padding, as T5 output is
DECODERS = ("wan", "tae")
# TAEHV's layout at a quarter of taew2_1's width, as the tiny Wan VAE is the Wan VAE's at a sixth
TINY_TAEHV = TAEHVConfig(channels=(64, 32, 16, 16))


def tiny_demo_engine(config: EngineConfig | None = None, seed: int = 0, device: str = "cpu",
                     decoder: str = "wan", encoder: bool = False) -> tuple[Engine, torch.Tensor]:
    """The tiny DiT and decoder (``wan``: the Wan VAE, ``tae``: TAEHV) seeded with ``seed``, and a random prompt
    ``[1, 512, text_dim]``. ``encoder``: the decoder comes with its encoder, for context frames (an image, a clip);
    the tiny Wan VAE then has one more residual block a stage (its encoder widens each stage in one), a third slower."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown demo decoder {decoder!r}; choose one of {DECODERS}")
    torch.manual_seed(seed)
    dit = WanDiT("tiny").eval().requires_grad_(False).to(device)
    prompt = torch.zeros(1, dit.config.text_len, dit.config.text_dim, device=device)  # [1, 512, text_dim]
    prompt[:, :PROMPT_ROWS] = torch.randn(1, PROMPT_ROWS, dit.config.text_dim, device=device)
    if decoder == "tae":
        vae = TAEHV(TINY_TAEHV, with_encoder=encoder)
    else:
        # one residual block per stage and 16 channels: CPU 3D convs with 8 channels fall off PyTorch's fast path
        vae = WanVAE(VAEConfig(dim=16, num_res_blocks=1 if encoder else 0), with_encoder=encoder)
    vae = vae.eval().requires_grad_(False).to(device)
    return Engine(dit, config or EngineConfig(), vae=vae), prompt


def stand_in_prompt(text: str, text_len: int, text_dim: int) -> torch.Tensor:
    """The demo model's stand-in for a text encoder (it has none): ``text`` as prompt embeddings ``[1, text_len,
    text_dim]`` laid out as the demo's random prompt is, their rows drawn from a generator seeded with the text's
    SHA-256. The same text always gives the same embeddings and another text others, so a demo server can take any
    prompt and show switches and extensions under it; the words mean nothing to the random model."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    prompt = torch.zeros(1, text_len, text_dim)  # [1, 512, text_dim]
    prompt[:, :PROMPT_ROWS] = torch.randn(1, PROMPT_ROWS, text_dim, generator=torch.Generator().manual_seed(seed))
    return prompt
