"""Compiled kernels on a GPU, in the precisions they run in: every pre-pass backend's error against float64 is at
most twice the torch reference's own error in the same precision (skipped without a GPU)."""

import pytest
import torch

from conftest import rel_err
from histream_engine.attention import BACKENDS, get_backend
from histream_engine.attention.ring import RingView
from histream_engine.attention.rope import inv_freqs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled kernels)")

PREPASS_BACKENDS = [e.name for e in BACKENDS if e.core is not None] + ["auto"]

CASES = {
    # a wrapped 6-slot ring, absolute positions (K cached rotated), NTK on both spatial axes; 510 tokens per frame
    "wrapped_ntk": dict(grid=(17, 30), slots=[0, 4, 5, 1, 2, 3], frame_pos=[0, 10, 11, 12, 13, 14], scales=(1.0, 1.4, 2.3), rotated=True),
    # window positions (K rotated per call), plain RoPE, 97 tokens per frame (no tile divides it)
    "window_97": dict(grid=(1, 97), slots=[0, 1, 5, 6, 2, 3, 4], frame_pos=[0, 1, 2, 3, 4, 5, 6], scales=(1.0, 1.0, 1.0), rotated=False),
    # first chunk: 3 of 6 slots visible
    "first_chunk": dict(grid=(20, 36), slots=[0, 1, 2], frame_pos=[0, 1, 2], scales=(1.0, 1.0, 1.2), rotated=True),
}


def case_inputs(case, dtype, H=4, D=128, seed=0):
    grid, slots = case["grid"], case["slots"]
    num_slots = max(6, len(slots))
    view = RingView(slots=slots, frame_pos=case["frame_pos"], query_frames=3, grid=grid, num_slots=num_slots,
                    freqs=inv_freqs(D, 10000.0, case["scales"]), device=torch.device("cuda"), rotated_keys=case["rotated"])
    S = grid[0] * grid[1]
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, 3 * S, H, D, device="cuda", generator=g)
    k = torch.randn(1, num_slots * S, H, D, device="cuda", generator=g)
    v = torch.randn(1, num_slots * S, H, D, device="cuda", generator=g)
    return view, q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend_name", PREPASS_BACKENDS)
def test_backend_error_at_most_twice_torchs_own(backend_name, case, dtype):
    entry = next(e for e in BACKENDS if e.name == backend_name)
    if (reason := entry.unavailable_reason()) is not None:
        pytest.skip(reason)
    view, q, k, v = case_inputs(CASES[case], dtype)
    torch_backend = get_backend("torch")
    ref = torch_backend.ring_attention(q.double(), k.double(), v.double(), view)
    own = rel_err(torch_backend.ring_attention(q, k, v, view), ref)
    out = get_backend(backend_name).ring_attention(q, k, v, view)
    assert out.dtype == dtype and not out.isnan().any()
    assert rel_err(out, ref) <= 2 * own, (rel_err(out, ref), own)


def available(name: str) -> str:
    """``name``, skipping the test where that backend cannot run here."""
    if (reason := next(e for e in BACKENDS if e.name == name).unavailable_reason()) is not None:
        pytest.skip(reason)
    return name


@pytest.mark.parametrize("backend_name", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["wrapped_ntk", "window_97"])
def test_prepass_equals_plain_rotation_on_gpu(dtype, case, backend_name):
    from histream_engine.attention.prepass_backend import reference_prepass

    view, q, k, v = case_inputs(CASES[case], dtype)
    got = get_backend(available(backend_name)).prepass(q, k, v, view)
    want = reference_prepass(q, k, v, view)
    # both round the same fp32 rotation to the input precision; FMA contraction may flip a last bit
    eps = torch.finfo(dtype).eps
    for name, g, w in zip("qkv", got, want):
        assert g.shape == w.shape and rel_err(g, w) < eps, name


@pytest.mark.parametrize("backend_name", ["triton", "cuda"])
def test_recache_write_rotates_like_the_torch_path_on_gpu(backend_name):
    """The fused K RMSNorm + RoPE write against the torch backend's, in bf16 on the GPU."""
    from histream_engine.model.dit import RMSNorm

    view, _q, _k, _v = case_inputs(CASES["wrapped_ntk"], torch.bfloat16)
    H, D, L = 4, 128, 3 * view.tokens_per_frame
    g = torch.Generator(device="cuda").manual_seed(3)
    k_proj = torch.randn(1, L, H * D, device="cuda", generator=g).bfloat16()
    v_proj = torch.randn(1, L, H * D, device="cuda", generator=g).bfloat16()
    norm = RMSNorm(H * D, 1e-6).cuda().bfloat16()
    stores = []
    for name in ("torch", available(backend_name)):
        k_store = torch.zeros(1, 6 * view.tokens_per_frame, H, D, device="cuda", dtype=torch.bfloat16)
        v_store = torch.zeros_like(k_store)
        get_backend(name).write_kv(k_store, v_store, view, k_proj, v_proj, norm)
        stores.append((k_store, v_store))
    (k_ref, v_ref), (k_got, v_got) = stores
    assert torch.equal(v_got, v_ref)
    assert rel_err(k_got, k_ref) < torch.finfo(torch.bfloat16).eps
