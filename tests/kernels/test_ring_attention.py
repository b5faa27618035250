import math

import pytest
import torch

from conftest import rel_err
from histream_engine.attention.rope import apply_rope, axis_dims, grid_positions, inv_freqs, rope_cos_sin, rope_table
from histream_engine.kernels.ring_attention import ring_attention


def reference(q, k_store, v_store, slots, frame_pos, grid, freqs):
    """Gather the visible frames, rotate, softmax attention, all in float64."""
    S = grid[0] * grid[1]
    rows = torch.cat([torch.arange(s * S, (s + 1) * S) for s in slots.tolist()])
    k, v = k_store[:, rows].double(), v_store[:, rows].double()
    pos = grid_positions(frame_pos.tolist(), *grid)
    cos, sin = rope_cos_sin(pos, freqs, torch.float64)
    n = q.shape[1]
    qr = apply_rope(q.double(), cos[-n:], sin[-n:])
    kr = apply_rope(k, cos, sin)
    scores = torch.einsum("bqhd,bkhd->bhqk", qr, kr) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def run(dtype, head_dim, grid, slots, frame_pos, query_frames, scales=(1.0, 1.0, 1.0), ring_slots=7, B=1, H=2, seed=0):
    torch.manual_seed(seed)
    S = grid[0] * grid[1]
    q = torch.randn(B, query_frames * S, H, head_dim).to(dtype)
    k_store = torch.randn(B, ring_slots * S, H, head_dim).to(dtype)
    v_store = torch.randn(B, ring_slots * S, H, head_dim).to(dtype)
    slots = torch.tensor(slots, dtype=torch.int32)
    frame_pos = torch.tensor(frame_pos, dtype=torch.int32)
    freqs = inv_freqs(head_dim, 10000.0, scales)
    cos, sin = rope_table(max(int(frame_pos.max()) + 1, *grid), freqs)
    out = torch.full_like(q, float("nan"))  # poisoned: an unwritten element fails the comparison
    pairs = tuple(d // 2 for d in axis_dims(head_dim))
    ring_attention(q, k_store, v_store, slots, frame_pos, cos, sin, grid, pairs, out=out)
    return out, reference(q, k_store, v_store, slots, frame_pos, grid, freqs)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 3e-3)])
@pytest.mark.parametrize(
    "head_dim, grid, slots, frame_pos, scales",
    [
        # 97 tokens per frame, a wrapped ring (anchor slot 0, window slots 5, 6, 1, 2, 3), absolute positions, NTK
        (32, (1, 97), [0, 5, 6, 1, 2, 3], [0, 10, 11, 12, 13, 14], (1.0, 1.3, 2.1)),
        # odd 3x7 grid, window positions, plain RoPE
        (64, (3, 7), [0, 4, 5, 6, 1, 2], [0, 1, 2, 3, 4, 5], (1.0, 1.0, 1.0)),
        # the real head dim, first chunk (3 frames visible)
        (128, (5, 3), [0, 1, 2], [0, 1, 2], (1.0, 2.27, 2.31)),
    ],
)
def test_ring_attention_matches_reference(dtype, tol, head_dim, grid, slots, frame_pos, scales):
    out, ref = run(dtype, head_dim, grid, slots, frame_pos, query_frames=3, scales=scales)
    assert not torch.isnan(out).any()
    assert rel_err(out, ref) < tol


def test_batch_and_heads_are_independent():
    out, ref = run(torch.float32, 32, (2, 5), [3, 1, 0], [7, 8, 9], query_frames=2, B=3, H=3, ring_slots=4)
    assert rel_err(out, ref) < 1e-4


def test_strided_queries_are_read_correctly():
    # q as a view of a larger buffer (the model's head split of a [B, L, C] projection is such a view)
    torch.manual_seed(1)
    grid, S, H, D = (2, 3), 6, 2, 32
    big = torch.randn(1, 3 * S, H, 2 * D)
    q = big[..., :D]
    k_store, v_store = torch.randn(1, 4 * S, H, D), torch.randn(1, 4 * S, H, D)
    slots, pos = torch.tensor([2, 0, 3], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32)
    freqs = inv_freqs(D)
    cos, sin = rope_table(4, freqs)
    out = ring_attention(q, k_store, v_store, slots, pos, cos, sin, grid, (6, 5, 5))
    assert rel_err(out, reference(q, k_store, v_store, slots, pos, grid, freqs)) < 1e-4


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(q_dtype=torch.float64), "fp16/bf16/fp32"),
        (dict(head_dim=48), "head_dim"),
        (dict(slots_dtype=torch.int64), "int32"),
        (dict(query_frames=4), "whole frames"),
        (dict(table_rows=2), "RoPE table"),
    ],
)
def test_launcher_rejects_bad_inputs(change, match):
    D = change.get("head_dim", 32)
    dtype = change.get("q_dtype", torch.float32)
    S, nv = 6, 3
    q = torch.randn(1, change.get("query_frames", 3) * S, 2, D, dtype=dtype)
    store = torch.randn(1, 4 * S, 2, D, dtype=dtype)
    slots = torch.tensor([0, 1, 2], dtype=change.get("slots_dtype", torch.int32))
    pos = torch.arange(nv, dtype=torch.int32)
    cos, sin = rope_table(change.get("table_rows", 4), inv_freqs(D))
    with pytest.raises(ValueError, match=match):
        ring_attention(q, store, store, slots, pos, cos, sin, (2, 3), tuple(d // 2 for d in axis_dims(D)))
