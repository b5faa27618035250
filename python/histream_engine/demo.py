"""The embedded tiny models of ``histream demo`` and of the C++ host's ``Engine::tiny_demo``: random weights, nothing
downloaded, seconds on a CPU. The picture is noise; the path (chunked DiT, KV rings, streaming VAE) is the real one."""

from __future__ import annotations

import torch

from .model import WanDiT
from .model.vae import VAEConfig, WanVAE
from .runtime import Engine, EngineConfig

PROMPT_ROWS = 12  # real rows of the random prompt; the rest is zero padding, as T5 output is


def tiny_demo_engine(config: EngineConfig | None = None, seed: int = 0, device: str = "cpu") -> tuple[Engine, torch.Tensor]:
    """The tiny DiT and VAE seeded with ``seed``, and a random prompt ``[1, 512, text_dim]``."""
    torch.manual_seed(seed)
    dit = WanDiT("tiny").eval().requires_grad_(False).to(device)
    # one residual block per stage and 16 channels: CPU 3D convs with 8 channels fall off PyTorch's fast path
    vae = WanVAE(VAEConfig(dim=16, num_res_blocks=0)).eval().requires_grad_(False).to(device)
    prompt = torch.zeros(1, dit.config.text_len, dit.config.text_dim, device=device)  # [1, 512, text_dim]
    prompt[:, :PROMPT_ROWS] = torch.randn(1, PROMPT_ROWS, dit.config.text_dim, device=device)
    return Engine(dit, config or EngineConfig(), vae=vae), prompt
