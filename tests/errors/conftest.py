"""Shared by the bad-input matrix: one tiny demo engine (random weights, CPU), embeddings files of every kind, and a way
to make a model go non-finite after its first chunk (``poison_time_zero``)."""

import pytest
import torch
from safetensors.torch import save_file

from histream_engine import host
from histream_engine.model.dit import sinusoidal_embedding


@pytest.fixture(scope="session")
def tiny_host():
    return host.tiny_demo("cpu", "torch", 0)


@pytest.fixture(scope="session")
def embeds_dir(tmp_path_factory, tiny_host):
    """good.pt, nan.pt, inf.safetensors, batch.pt (2 prompts), empty.pt (no tokens), complex.pt, ints.pt, wide.pt (wrong
    width); and what the server must not serve: link_out.pt (a link to a file outside the folder), passwd.pt (a link to
    /etc/passwd), dangling.pt (a link to nothing), dir.pt (a folder), notes.pt -> notes.txt (a link to a file inside
    whose name the loader does not read)."""
    d = tmp_path_factory.mktemp("embeds")
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.pt"
    dim = tiny_host.engine.dit.config.text_dim
    good = torch.randn(8, dim)  # [L, text_dim]
    torch.save(good, d / "good.pt")
    torch.save(torch.where(torch.arange(8)[:, None] == 3, float("nan"), good), d / "nan.pt")
    save_file({"e": torch.full((8, dim), float("inf"))}, str(d / "inf.safetensors"))
    torch.save(torch.randn(2, 8, dim), d / "batch.pt")
    torch.save(torch.randn(0, dim), d / "empty.pt")
    torch.save(torch.randn(8, dim, dtype=torch.complex64), d / "complex.pt")
    torch.save(torch.ones(8, dim, dtype=torch.int64), d / "ints.pt")
    torch.save(torch.randn(8, dim + 1), d / "wide.pt")
    torch.save(good, outside)
    (d / "link_out.pt").symlink_to(outside)
    (d / "passwd.pt").symlink_to("/etc/passwd")
    (d / "dangling.pt").symlink_to(d / "nothing-here.pt")
    (d / "dir.pt").mkdir()
    (d / "notes.txt").write_text("not embeddings")
    (d / "notes.pt").symlink_to(d / "notes.txt")
    return d


def poison_time_zero(dit, timesteps) -> None:
    """Make ``dit`` go non-finite mid-run: its time embedding turns NaN at t=0 and stays exactly as it was at every t
    in ``timesteps`` (the schedule's denoising steps), so the first chunk is finite and the t=0 recache after it writes
    NaN K/V, which the second chunk attends. One hidden unit of the embedding's first layer reads only the cos(t f)
    columns that are <= 0.5 at those t, with a weight large enough that their sum overflows float32 only at t=0, where
    every cos is 1; the second layer reads that unit with weight 0, and 0 * inf is NaN where 0 * finite is 0."""
    half = dit.config.freq_dim // 2
    cos = sinusoidal_embedding(dit.config.freq_dim, torch.tensor(timesteps, dtype=torch.float64))[:, :half]  # [S, half]
    cols = (cos <= 0.5).all(0).nonzero().flatten()
    assert len(cols) >= 2, f"fewer than 2 cos columns stay <= 0.5 at {timesteps}: one weight alone would be inf"
    big = torch.finfo(torch.float32).max
    first, second = dit.time_embedding[0], dit.time_embedding[2]
    with torch.no_grad():
        first.weight[0], first.bias[0] = 0.0, 0.0
        first.weight[0, cols] = 1.5 * big / len(cols)  # at most 0.75 * max where each cos <= 0.5; 1.5 * max at t=0
        second.weight[:, 0] = 0.0
