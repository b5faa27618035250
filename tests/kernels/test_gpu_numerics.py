"""Compiled kernels on a GPU, in the precisions they run in: every pre-pass backend's error against float64 is at
most twice the torch reference's own error in the same precision; the FP8 kernels (core, pre-pass, recache write)
against their torch models (skipped without a GPU)."""

import pytest
import torch

from conftest import rel_err
from histream_engine.attention import BACKENDS, get_backend
from histream_engine.attention.protocol import CacheLayer
from histream_engine.attention.ring import RingView
from histream_engine.attention.rope import inv_freqs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled kernels)")

PREPASS_BACKENDS = [e.name for e in BACKENDS.entries if e.traits is not None] + ["auto"]

CASES = {
    # a wrapped 6-slot ring, absolute positions (K cached rotated), NTK on both spatial axes; 510 tokens per frame
    "wrapped_ntk": dict(grid=(17, 30), slots=[0, 4, 5, 1, 2, 3], frame_pos=[0, 10, 11, 12, 13, 14], scales=(1.0, 1.4, 2.3), rotated=True),
    # window positions (K rotated per call), plain RoPE, 97 tokens per frame (no tile divides it)
    "window_97": dict(grid=(1, 97), slots=[0, 1, 5, 6, 2, 3, 4], frame_pos=[0, 1, 2, 3, 4, 5, 6], scales=(1.0, 1.0, 1.0), rotated=False),
    # first chunk: 3 of 6 slots visible
    "first_chunk": dict(grid=(20, 36), slots=[0, 1, 2], frame_pos=[0, 1, 2], scales=(1.0, 1.0, 1.2), rotated=True),
}


def case_inputs(case, dtype, device, H=4, D=128, seed=0):
    grid, slots = case["grid"], case["slots"]
    num_slots = max(6, len(slots))
    view = RingView(slots=slots, frame_pos=case["frame_pos"], query_frames=3, grid=grid, num_slots=num_slots,
                    freqs=inv_freqs(D, 10000.0, case["scales"]), device=device, rotated_keys=case["rotated"])
    S = grid[0] * grid[1]
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, 3 * S, H, D, device=device, generator=g)
    k = torch.randn(1, num_slots * S, H, D, device=device, generator=g)
    v = torch.randn(1, num_slots * S, H, D, device=device, generator=g)
    return view, q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend_name", PREPASS_BACKENDS)
def test_backend_error_at_most_twice_torchs_own(backend_name, case, dtype, device):
    entry = BACKENDS.entry(backend_name)
    if (reason := entry.unavailable_reason()) is not None:
        pytest.skip(reason)
    view, q, k, v = case_inputs(CASES[case], dtype, device)
    torch_backend = get_backend("torch")
    ref = torch_backend.ring_attention(q.double(), CacheLayer(k.double(), v.double()), view)
    own = rel_err(torch_backend.ring_attention(q, CacheLayer(k, v), view), ref)
    out = get_backend(backend_name).ring_attention(q, CacheLayer(k, v), view)
    assert out.dtype == dtype and not out.isnan().any()
    assert rel_err(out, ref) <= 2 * own, (rel_err(out, ref), own)


def available(name: str) -> str:
    """``name``, skipping the test where that backend cannot run here."""
    if (reason := BACKENDS.entry(name).unavailable_reason()) is not None:
        pytest.skip(reason)
    return name


@pytest.mark.parametrize("backend_name", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["wrapped_ntk", "window_97"])
def test_prepass_equals_plain_rotation_on_gpu(dtype, case, backend_name, device):
    from histream_engine.attention.prepass_backend import reference_prepass

    view, q, k, v = case_inputs(CASES[case], dtype, device)
    got = get_backend(available(backend_name)).prepass(q, CacheLayer(k, v), view)
    want = reference_prepass(q, CacheLayer(k, v), view)
    # both round the same fp32 rotation to the input precision; FMA contraction may flip a last bit
    eps = torch.finfo(dtype).eps
    for name, g, w in zip("qkv", got, want):
        assert g.shape == w.shape and rel_err(g, w) < eps, name


@pytest.mark.parametrize("backend_name", ["triton", "cuda"])
def test_recache_write_rotates_like_the_torch_path_on_gpu(backend_name, device):
    """The fused K RMSNorm + RoPE write against the torch backend's, in bf16 on the GPU."""
    from histream_engine.model.dit import RMSNorm

    view, _q, _k, _v = case_inputs(CASES["wrapped_ntk"], torch.bfloat16, device)
    H, D, L = 4, 128, 3 * view.tokens_per_frame
    g = torch.Generator(device=device).manual_seed(3)
    k_proj = torch.randn(1, L, H * D, device=device, generator=g).bfloat16()
    v_proj = torch.randn(1, L, H * D, device=device, generator=g).bfloat16()
    norm = RMSNorm(H * D, 1e-6).to(device).bfloat16()
    stores = []
    for name in ("torch", available(backend_name)):
        k_store = torch.zeros(1, 6 * view.tokens_per_frame, H, D, device=device, dtype=torch.bfloat16)
        v_store = torch.zeros_like(k_store)
        get_backend(name).write_kv(CacheLayer(k_store, v_store), view, k_proj, v_proj, norm)
        stores.append((k_store, v_store))
    (k_ref, v_ref), (k_got, v_got) = stores
    assert torch.equal(v_got, v_ref)
    assert rel_err(k_got, k_ref) < torch.finfo(torch.bfloat16).eps


# ---------- FP8 (issue 25, docs/fp8.md) ------------------------------------------------------------------------------
# No GPU has run these yet: the bounds below come from reasoning, not measurement, and the first GPU suite run should
# replace them with its figures and a margin. On sm_90 Triton's FP8 dots accumulate in Hopper's fast FP8 mode
# (max_num_imprecise_acc 2**30, about 14 bits kept per DeepSeek-V3 section 3.3.2), the acc of P.V included, which the
# fp32 torch model does not: 5e-3 allows that, and stays 10x under the core's own error against exact attention
# (0.046-0.064 on CPU, tests/attention/test_fp8.py), so a misapplied scale (errors 0.9 and up there) cannot pass.
FP8_KERNEL_TOL = 5e-3
FP8_CASES = {
    "wrapped_ntk": CASES["wrapped_ntk"],  # 510 tokens a frame: slots start off 16-row tiles (clipped head tiles)
    "window_97": CASES["window_97"],  # K re-quantized by the pre-pass (window positions), tail tiles everywhere
    # the real 1080p window (8160 tokens a frame, 48960 keys) with 2 heads: the longest accumulation the engine runs
    "1080p": dict(grid=(68, 120), slots=[0, 4, 5, 1, 2, 3], frame_pos=[0, 10, 11, 12, 13, 14], scales=(1.0, 68 / 30, 120 / 52),
                  rotated=True),
}


def fp8_gpu():
    """Skip where the compiled FP8 kernels cannot run: no Triton, or a GPU older than Hopper (TMA, e4m3 wgmma)."""
    available("triton_fp8")
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip(f"the Triton FP8 core is written for sm_90a (TMA, e4m3 wgmma); {torch.cuda.get_device_name()} is older")


@pytest.mark.parametrize("case", sorted(FP8_CASES))
def test_fp8_core_equals_its_torch_model_on_gpu(case, device):
    from histream_engine.attention.fp8 import TorchFp8Attention, TritonFp8Attention
    from histream_engine.bench.attention import fp8_ring
    from histream_engine.kernels.attention_core_fp8 import CONFIGS

    fp8_gpu()
    view, q, k, v = case_inputs(FP8_CASES[case], torch.bfloat16, device, H=2 if case == "1080p" else 4)
    ring = fp8_ring(k, v, view.tokens_per_frame)  # e4m3 K, V (keys contiguous), scales [B, slots, H]
    assert {c[1] for c in CONFIGS} == {128}  # every config the autotuner may pick tiles keys by 128, as the model does
    model = TorchFp8Attention(block_n=128).ring_attention(q, ring, view)
    got = TritonFp8Attention().ring_attention(q, ring, view)
    exact = get_backend("torch").ring_attention(q.float(), CacheLayer(k.float(), v.float()), view)  # float32: float64 scores at 1080p need 19 GB
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert rel_err(got, model) < FP8_KERNEL_TOL, rel_err(got, model)
    assert rel_err(got, exact) <= 1.1 * rel_err(model, exact), (rel_err(got, exact), rel_err(model, exact))


@pytest.mark.parametrize("rotated", [True, False])
def test_fp8_recache_write_equals_its_torch_reference_on_gpu(rotated, device):
    """The fused e4m3 write (K RMSNorm, RoPE where rotated, per-(frame, head) scales) against ``reference_write_kv_fp8``."""
    from histream_engine.attention.fp8 import TritonFp8Attention
    from histream_engine.attention.fp8_ring import reference_write_kv_fp8
    from histream_engine.attention.fp8_quant import dequantize_frames
    from histream_engine.bench.attention import fp8_ring
    from histream_engine.model.dit import RMSNorm

    fp8_gpu()
    view, _q, k, _v = case_inputs(dict(CASES["wrapped_ntk"], rotated=rotated), torch.bfloat16, device)
    H, D, L = 4, 128, 3 * view.tokens_per_frame
    g = torch.Generator(device=device).manual_seed(5)
    k_proj = torch.randn(1, L, H * D, device=device, generator=g).bfloat16()
    v_proj = (3 * torch.randn(1, L, H * D, device=device, generator=g)).bfloat16()
    norm = RMSNorm(H * D, 1e-6).to(device).bfloat16()
    norm.weight.data = (torch.rand(H * D, device=device, generator=g) + 0.5).bfloat16()
    rings = []
    for write in (reference_write_kv_fp8, TritonFp8Attention().write_kv):
        ring = fp8_ring(torch.zeros_like(k), torch.zeros_like(k), view.tokens_per_frame)
        with torch.no_grad():  # as the engine runs it (a weight requiring grad also garbles the CPU interpreter's loads)
            write(ring, view, k_proj, v_proj, norm)
        rings.append(ring)
    (k_ref, v_ref, ks_ref, vs_ref), (k_got, v_got, ks_got, vs_got) = ((r.k, r.v, r.k_scale, r.v_scale) for r in rings)
    # V: no arithmetic before the scale, so scales agree to the bit and codes but for division ties
    assert rel_err(vs_got, vs_ref) < 1e-6
    assert (v_got.float() != v_ref.float()).float().mean() < 1e-3
    # K: RMSNorm (and RoPE) round to bf16 in another order; where a group's largest element moves by one bf16 ulp,
    # its scale moves by 2^-8 and codes near a rounding boundary flip: dequantized values stay within 1e-2 (e4m3's own
    # rounding error is 0.026, tests/runtime/test_fp8_engine.py)
    assert ((ks_got - ks_ref).abs() / ks_ref).max() <= 2.0**-7
    for store_got, store_ref, s_got, s_ref in ((k_got, k_ref, ks_got, ks_ref), (v_got, v_ref, vs_got, vs_ref)):
        assert rel_err(dequantize_frames(store_got, s_got, torch.float32), dequantize_frames(store_ref, s_ref, torch.float32)) < 1e-2
