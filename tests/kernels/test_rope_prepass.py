import pytest
import torch

from conftest import rel_err
from histream_engine.attention.ring import RingView
from histream_engine.attention.rope import apply_rope, axis_dims, grid_positions, inv_freqs, rope_cos_sin, rope_table
from histream_engine.kernels.rope_prepass import rope_prepass


def make_view(head_dim, grid, slots, frame_pos, scales, num_slots, device, query_frames=3):
    return RingView(slots=slots, frame_pos=frame_pos, query_frames=query_frames, grid=grid, num_slots=num_slots,
                    freqs=inv_freqs(head_dim, 10000.0, scales), device=device)


def run(view, dtype, B=1, H=2, q=None, with_k=True, seed=0):
    """The pre-pass, on outputs poisoned with NaN, and what it should write (plain torch rotation)."""
    torch.manual_seed(seed)
    D = 2 * view.freqs.numel()
    S, R = view.tokens_per_frame, view.num_slots * view.tokens_per_frame
    device = view.device
    q = torch.randn(B, view.query_frames * S, H, D, device=device).to(dtype) if q is None else q
    k_store = torch.randn(B, R, H, D, device=device).to(dtype)
    q_out = torch.full((B, H, q.shape[1], D), float("nan"), dtype=dtype, device=device)
    k_out = torch.full((B, H, R, D), float("nan"), dtype=dtype, device=device)
    cos, sin = view.rope_table
    pairs = tuple(d // 2 for d in axis_dims(D))
    k_args = (k_store, view.slot_position_index, k_out) if with_k else ()
    rope_prepass(q, view.query_position_index, cos, sin, view.grid, pairs, q_out, *k_args)
    q_ref = apply_rope(q, *view.q_rope).transpose(1, 2)
    k_ref = apply_rope(k_store[:, : view.key_tokens], *view.slot_rope).transpose(1, 2)
    return q_out, k_out, q_ref, k_ref


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float16, 1e-3)])
@pytest.mark.parametrize(
    "head_dim, grid, slots, frame_pos, scales, num_slots",
    [
        # 97 tokens per frame, a wrapped ring (anchor slot 0, history in slots 4, 5, the chunk in 1, 2, 3), NTK
        (32, (1, 97), [0, 4, 5, 1, 2, 3], [0, 10, 11, 12, 13, 14], (1.0, 1.3, 2.1), 6),
        # odd 3x7 grid, window positions, plain RoPE, two anchors in a 7-slot ring
        (64, (3, 7), [0, 1, 5, 6, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6], (1.0, 1.0, 1.0), 7),
        # the real head dim, first chunk: 3 of 6 slots visible, rows past them must stay untouched
        (128, (5, 3), [0, 1, 2], [0, 1, 2], (1.0, 2.27, 2.31), 6),
    ],
)
def test_prepass_matches_plain_rotation(dtype, tol, head_dim, grid, slots, frame_pos, scales, num_slots, device):
    view = make_view(head_dim, grid, slots, frame_pos, scales, num_slots, device)
    q_out, k_out, q_ref, k_ref = run(view, dtype, B=2)
    lk = view.key_tokens
    assert not q_out.isnan().any() and not k_out[:, :, :lk].isnan().any()
    assert k_out[:, :, lk:].isnan().all()  # only the visible slots are written
    assert rel_err(q_out, q_ref) < tol and rel_err(k_out[:, :, :lk], k_ref) < tol


def test_queries_only_when_keys_are_cached_rotated(device):
    view = make_view(32, (2, 5), [0, 4, 5, 1, 2, 3], [0, 10, 11, 12, 13, 14], (1.0, 1.5, 1.0), 6, device)
    q_out, k_out, q_ref, _ = run(view, torch.float32, with_k=False)
    assert rel_err(q_out, q_ref) < 1e-6 and k_out.isnan().all()


def test_strided_queries_are_read_correctly(device):
    # q as a view of a larger buffer, as the head split of a wider projection would be
    view = make_view(32, (2, 3), [1, 0, 2], [1, 0, 2], (1.0, 1.0, 1.0), 4, device, query_frames=1)
    big = torch.randn(1, 6, 2, 64, device=device)
    q_out, k_out, q_ref, k_ref = run(view, torch.float32, q=big[..., :32])
    assert rel_err(q_out, q_ref) < 1e-6 and rel_err(k_out[:, :, :18], k_ref) < 1e-6


def test_slot_rope_follows_slot_order(device):
    view = make_view(32, (2, 3), [2, 0, 1], [7, 5, 6], (1.0, 1.0, 1.0), 3, device, query_frames=1)
    assert view.slot_positions == [5, 6, 7]
    want = rope_cos_sin(grid_positions([5, 6, 7], 2, 3, device=device), view.freqs)
    assert torch.equal(view.slot_rope[0], want[0]) and torch.equal(view.q_rope[1], want[1][6:12])  # the query frame is at 6


def test_view_refuses_slots_that_are_not_a_prefix(device):
    view = make_view(32, (2, 3), [0, 2, 3], [0, 1, 2], (1.0, 1.0, 1.0), 4, device)
    with pytest.raises(ValueError, match="not the ring's first 3 slots"):
        view.slot_positions


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(dtype=torch.float64), "fp16/bf16/fp32"),
        (dict(head_dim=48), "twice a power of two"),
        (dict(pos_dtype=torch.int64), "int32"),
        (dict(query_frames=4), "query frames"),
        (dict(table_rows=2), "RoPE table"),
        (dict(out_rows=5), "k_out must be"),
        (dict(k_without_out=True), "all of k_store, slot_pos and k_out"),
    ],
)
def test_launcher_rejects_bad_inputs(change, match, device):
    D = change.get("head_dim", 32)
    dtype = change.get("dtype", torch.float32)
    S, B, H = 6, 1, 2
    q = torch.randn(B, change.get("query_frames", 3) * S, H, D, dtype=dtype, device=device)
    store = torch.randn(B, 4 * S, H, D, dtype=dtype, device=device)
    q_pos = torch.arange(3, dtype=change.get("pos_dtype", torch.int32), device=device)
    slot_pos = torch.arange(3, dtype=torch.int32, device=device)
    cos, sin = rope_table(change.get("table_rows", 4), inv_freqs(D), device=device)
    q_out = torch.empty(B, H, q.shape[1], D, dtype=dtype, device=device)
    k_out = None if change.get("k_without_out") else torch.empty(B, H, change.get("out_rows", 4) * S, D, dtype=dtype, device=device)
    pairs = tuple(d // 2 for d in axis_dims(D)) if D != 48 else (8, 8, 8)
    with pytest.raises(ValueError, match=match):
        rope_prepass(q, q_pos, cos, sin, (2, 3), pairs, q_out, store, slot_pos, k_out)
