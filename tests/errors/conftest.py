"""Shared by the bad-input matrix: one tiny demo engine (random weights, CPU) and embeddings files of every kind."""

import pytest
import torch
from safetensors.torch import save_file

from histream_engine import host



@pytest.fixture(scope="session")
def tiny_host():
    return host.tiny_demo("cpu", "torch", 0)


@pytest.fixture(scope="session")
def embeds_dir(tmp_path_factory, tiny_host):
    """good.pt, nan.pt, inf.safetensors, batch.pt (2 prompts), complex.pt, ints.pt, wide.pt (wrong width)."""
    d = tmp_path_factory.mktemp("embeds")
    dim = tiny_host.engine.dit.config.text_dim
    good = torch.randn(8, dim)  # [L, text_dim]
    torch.save(good, d / "good.pt")
    torch.save(torch.where(torch.arange(8)[:, None] == 3, float("nan"), good), d / "nan.pt")
    save_file({"e": torch.full((8, dim), float("inf"))}, str(d / "inf.safetensors"))
    torch.save(torch.randn(2, 8, dim), d / "batch.pt")
    torch.save(torch.randn(8, dim, dtype=torch.complex64), d / "complex.pt")
    torch.save(torch.ones(8, dim, dtype=torch.int64), d / "ints.pt")
    torch.save(torch.randn(8, dim + 1), d / "wide.pt")
    return d
