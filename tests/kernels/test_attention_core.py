import math

import pytest
import torch

from conftest import rel_err
from histream_engine.attention import cores
from histream_engine.kernels.attention_core import attention_core


def reference(q_rot, k_rot, v_store, lk):
    """Softmax attention over rows [0, lk) in float64; q_rot [B, H, Lq, D] -> [B, Lq, H, D]."""
    k = k_rot[:, :, :lk].double()
    v = v_store[:, :lk].double().transpose(1, 2)
    scores = q_rot.double() @ k.transpose(-1, -2) / math.sqrt(q_rot.shape[-1])
    return (scores.softmax(-1) @ v).transpose(1, 2)


def inputs(B, H, Lq, R, D, dtype, lk, seed=0):
    torch.manual_seed(seed)
    q = torch.randn(B, H, Lq, D).to(dtype)  # [B, H, Lq, D]
    k = torch.randn(B, H, R, D).to(dtype)  # [B, H, R, D]
    v = torch.randn(B, R, H, D).to(dtype)  # [B, R, H, D]
    # Rows past the visible keys: stale K scratch may hold anything, the ring's V only finite values.
    k[:, :, lk:] = float("nan")
    v[:, lk:] = 1e4
    return q, k, v


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
def test_core_matches_reference(dtype, tol, B, H, Lq, R, D, lk):
    q, k, v = inputs(B, H, Lq, R, D, dtype, lk)
    out = attention_core(q, k, v, lk)
    assert out.shape == (B, Lq, H, D) and out.dtype == dtype
    assert rel_err(out, reference(q, k, v, lk)) < tol


@pytest.mark.parametrize("core", ["triton_core", "cudnn_core"])
def test_every_core_reads_the_same_layout(core):
    q, k, v = inputs(2, 2, 21, 70, 32, torch.float32, 42)
    out = getattr(cores, core)(q, k, v, 42)
    assert out.shape == (2, 21, 2, 32)
    assert rel_err(out, reference(q, k, v, 42)) < 1e-5


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(dtype=torch.float64), "fp16/bf16/fp32"),
        (dict(D=48), "head_dim"),
        (dict(lk=0), "key_tokens"),
        (dict(lk=71), "key_tokens"),
        (dict(v_heads=3), "must be \\[B, H, R, D\\]"),
        (dict(strided=True), "contiguous"),
    ],
)
def test_launcher_rejects_bad_inputs(change, match):
    D, dtype = change.get("D", 32), change.get("dtype", torch.float32)
    q = torch.randn(1, 2, 14, D, dtype=dtype)
    k = torch.randn(1, 2, 70, D, dtype=dtype)
    v = torch.randn(1, 70, change.get("v_heads", 2), D, dtype=dtype)
    if change.get("strided"):
        q = torch.randn(1, 2, 14, 2 * D, dtype=dtype)[..., :D]
    with pytest.raises(ValueError, match=match):
        attention_core(q, k, v, change.get("lk", 28))
