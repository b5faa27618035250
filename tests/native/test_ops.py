"""The CUDA launchers (histream_engine.native.ops): every bad input is refused in Python before a pointer reaches
histream_engine._C, and CPU tensors are refused with a clear reason. Their numerics run on a GPU
(tests/native/test_gpu.py); here they need no GPU, and not even the extension for the checks that come first."""

import pytest
import torch

from histream_engine.attention.rope import axis_dims, inv_freqs, rope_table
from histream_engine.native import ops

# The launchers' last check, which a GPU's tensors pass: the refusal of CPU ones. The checks before it run on the
# ``device`` fixture's device, so that on a GPU they are shown to come first.
CPU = torch.device("cpu")  # fixed-device: what the "needs CUDA tensors" cases hand the launchers


def prepass_args(device, D=32, dtype=torch.float16, S=6, frames=3, slots=4):
    q = torch.randn(1, frames * S, 2, D, device=device).to(dtype)
    store = torch.randn(1, slots * S, 2, D, device=device).to(dtype)
    cos, sin = rope_table(4, inv_freqs(D), device=device)
    return dict(q=q, q_pos=torch.arange(frames, dtype=torch.int32, device=device), cos=cos, sin=sin, grid=(2, 3),
                axis_pairs=tuple(d // 2 for d in axis_dims(D)), q_out=torch.empty(1, 2, frames * S, D, dtype=dtype, device=device),
                k_store=store, slot_pos=torch.arange(slots, dtype=torch.int32, device=device),
                k_out=torch.empty(1, 2, slots * S, D, dtype=dtype, device=device))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(q_pos=lambda device: torch.arange(2, dtype=torch.int32, device=device)), ValueError, "query frames"),
        (dict(slot_pos=lambda device: torch.arange(4, device=device)), ValueError, "int32"),
        (dict(k_out=lambda device: None), ValueError, "all of k_store, slot_pos and k_out"),
        (dict(q_out=lambda device: torch.empty(1, 2, 18, 16, dtype=torch.float16, device=device)), ValueError, "q_out must be"),
        ({}, RuntimeError, "needs CUDA tensors"),
    ],
)
def test_rope_prepass_refuses(change, error, match, device):
    device = CPU if error is RuntimeError else device  # fixed-device: the last case is the refusal of CPU tensors
    with pytest.raises(error, match=match):
        ops.rope_prepass(**{**prepass_args(device), **{name: make(device) for name, make in change.items()}})


def test_rope_prepass_needs_head_dims_in_multiples_of_16(device):
    # 24 = 2 x 12: the shared check refuses it already (not twice a power of two); 16 passes on to the device check
    with pytest.raises(ValueError, match="twice a power of two"):
        ops.rope_prepass(**prepass_args(device, D=24))
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        ops.rope_prepass(**prepass_args(CPU, D=16))  # fixed-device: the refusal of CPU tensors


def recache_args(device, dtype=torch.bfloat16, weight_dtype=None):
    k = torch.randn(1, 12, 64, device=device).to(dtype)
    store = torch.zeros(1, 24, 2, 32, dtype=dtype, device=device)
    weight = torch.ones(64, dtype=weight_dtype or dtype, device=device)
    return (k, k.clone(), weight, 1e-6, torch.arange(12, device=device), store, store.clone())


def test_recache_write_refuses_a_weight_of_another_dtype_and_cpu_tensors(device):
    with pytest.raises(ValueError, match="RMSNorm weight is torch.float32 but the projection is torch.bfloat16"):
        ops.recache_write(*recache_args(device, weight_dtype=torch.float32))
    with pytest.raises(ValueError, match="one dtype"):
        k, v, w, eps, rows, ks, vs = recache_args(device)
        ops.recache_write(k, v, w, eps, rows, ks.float(), vs.float())
    with pytest.raises(ValueError, match="rows must be int64"):
        k, v, w, eps, rows, ks, vs = recache_args(device)
        ops.recache_write(k, v, w, eps, rows.int(), ks, vs)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        ops.recache_write(*recache_args(CPU))  # fixed-device: the refusal of CPU tensors


def test_downsample_refuses_bad_latents(device):
    with pytest.raises(ValueError, match="not divisible"):
        ops.downsample_patchify(torch.randn(1, 16, 3, 8, 10, device=device), 2, (1, 2, 2))
    with pytest.raises(ValueError, match="fp16/bf16/fp32"):
        ops.downsample_patchify(torch.randn(1, 16, 3, 8, 8, dtype=torch.float64, device=device), 2, (1, 2, 2))
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        ops.downsample_patchify(torch.randn(1, 16, 3, 8, 8, device=CPU), 2, (1, 2, 2))  # fixed-device: CPU tensors refused


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(dtype=torch.float32), ValueError, "fp16/bf16 q, k, v"),
        (dict(D=48), ValueError, r"head_dim \(32, 64, 128\)"),
        (dict(lk=0), ValueError, "Lk > 0"),
        ({}, RuntimeError, "needs CUDA tensors"),
    ],
)
def test_attention_core_refuses(change, error, match, device):
    D, dtype, lk = change.get("D", 64), change.get("dtype", torch.bfloat16), change.get("lk", 20)
    device = CPU if error is RuntimeError else device  # fixed-device: the last case is the refusal of CPU tensors
    q = torch.randn(1, 2, 10, D, device=device).to(dtype)
    k = torch.randn(1, 2, lk, D, device=device).to(dtype)
    with pytest.raises(error, match=match):
        ops.attention_core(q, k, k.clone())


def test_cuda_errors_surface_as_exceptions_naming_the_kernel():
    """Straight into _C (past the Python checks): its own checks raise ValueError, and a CUDA error a RuntimeError
    that names the kernel (on this CPU machine: there is no device to launch on)."""
    from histream_engine.native import built_reason, extension

    if built_reason() is not None:
        pytest.skip(built_reason())
    C = extension()
    ptrs = [256] * 4
    geometry = (256, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # pointers and strides in their places (never dereferenced)
    with pytest.raises(ValueError, match="attention_core: head_dim must be 32, 64 or 128"):
        C.attention_core(1, 0, 0, ptrs[0], 0, 0, 0, ptrs[1], 0, 0, 0, ptrs[2], 0, 0, 0, ptrs[3], 0, 0, 0, 1, 1, 16, 16, 48, 1.0)
    with pytest.raises(ValueError, match="null pointer"):
        C.attention_core(1, 0, 0, 0, *geometry[1:4], *geometry[:4], *geometry[:4], *geometry[:4], 1, 1, 16, 16, 64, 1.0)
    if torch.cuda.is_available():
        return
    with pytest.raises(RuntimeError, match="histream_engine._C: cannot use CUDA device 0"):
        C.attention_core(1, 0, 0, *geometry[:4], *geometry[:4], *geometry[:4], *geometry[:4], 1, 1, 16, 16, 64, 1.0)


def test_rope_prepass_refuses_outputs_off_16_byte_alignment(monkeypatch, device):
    """Its 16-byte stores need aligned outputs: a contiguous view at an odd offset passes the shape checks."""
    args = prepass_args(device)
    pool = torch.empty(args["q_out"].numel() + 1, dtype=args["q_out"].dtype, device=device)
    args["q_out"] = pool[1:].view(args["q_out"].shape)  # contiguous, 2 bytes off
    monkeypatch.setattr(ops, "_launch_args", lambda *a: (1, 0, 0))  # past the device check, as on a GPU
    with pytest.raises(ValueError, match="q_out .* is not 16-byte aligned"):
        ops.rope_prepass(**args)
