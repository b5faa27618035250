import math

import pytest
import torch

from conftest import rel_err, skip_where_the_interpreter_cannot_run_the_cores
from histream_engine.attention import cores
from histream_engine.kernels.attention_core import attention_core


def reference(q, k, v):
    """Softmax attention in float64; q [B, H, Lq, D], k, v [B, H, Lk, D] -> [B, Lq, H, D]."""
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    return (scores.softmax(-1) @ v.double()).transpose(1, 2)


def inputs(B, H, Lq, R, D, dtype, lk, layout, device, seed=0):
    """Q from scratch [B, H, Lq, D]; K and V as [B, H, Lk, D] views of ring storage [B, R, H, D] or of scratch
    [B, H, R, D]. Rows past the visible keys hold values that would show if they were attended."""
    torch.manual_seed(seed)
    q = torch.randn(B, H, Lq, D, device=device).to(dtype)
    if layout == "ring":
        k_store, v_store = torch.randn(B, R, H, D, device=device).to(dtype), torch.randn(B, R, H, D, device=device).to(dtype)
        k_store[:, lk:], v_store[:, lk:] = 1e4, 1e4
        return q, k_store[:, :lk].transpose(1, 2), v_store[:, :lk].transpose(1, 2)
    k_scratch, v_store = torch.randn(B, H, R, D, device=device).to(dtype), torch.randn(B, R, H, D, device=device).to(dtype)
    k_scratch[:, :, lk:], v_store[:, lk:] = float("nan"), 1e4
    return q, k_scratch[:, :, :lk], v_store[:, :lk].transpose(1, 2)


@pytest.mark.parametrize("layout", ["ring", "scratch"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize(
    "B, H, Lq, R, D, lk",
    [
        (1, 2, 97, 6 * 97, 32, 6 * 97),  # 97 tokens per frame, every slot visible, partial blocks everywhere
        (2, 3, 45, 6 * 15, 64, 3 * 15),  # first chunk: half the ring visible, rows past it poisoned
        (1, 1, 30, 7 * 10, 128, 5 * 10),  # the real head dim, one tile of queries
        (1, 2, 64, 128, 32, 64),  # key count a whole number of blocks: no masked tail
    ],
)
def test_core_matches_reference(layout, dtype, tol, B, H, Lq, R, D, lk, device):
    skip_where_the_interpreter_cannot_run_the_cores()
    q, k, v = inputs(B, H, Lq, R, D, dtype, lk, layout, device)
    out = attention_core(q, k, v)
    assert out.shape == (B, Lq, H, D) and out.dtype == dtype
    assert rel_err(out, reference(q, k, v)) < tol


@pytest.mark.parametrize("core", ["triton_core", "cudnn_core"])
def test_every_core_reads_the_same_views(core, device):
    if core == "triton_core":
        skip_where_the_interpreter_cannot_run_the_cores()
    q, k, v = inputs(2, 2, 21, 70, 32, torch.float32, 42, "ring", device)
    out = getattr(cores, core)(q, k, v)
    assert out.shape == (2, 21, 2, 32)
    assert rel_err(out, reference(q, k, v)) < 1e-5


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(dtype=torch.float64), "fp16/bf16/fp32"),
        (dict(D=48), "head_dim"),
        (dict(lk=0), "Lk > 0"),
        (dict(v_heads=3), "must both be"),
        (dict(strided=True), "not 16-byte aligned"),
    ],
)
def test_launcher_rejects_bad_inputs(change, match, device):
    D, dtype, lk = change.get("D", 32), change.get("dtype", torch.float32), change.get("lk", 28)
    q = torch.randn(1, 2, 14, D, dtype=dtype, device=device)
    k = torch.randn(1, 2, lk, D, dtype=dtype, device=device)
    v = torch.randn(1, change.get("v_heads", 2), lk, D, dtype=dtype, device=device)
    if change.get("strided"):
        q = torch.randn(1, 2, 14, 2 * D + 1, dtype=dtype, device=device)[..., :D]  # rows 4*(2D+1) bytes apart: not 16-byte aligned
    with pytest.raises(ValueError, match=match):
        attention_core(q, k, v)
