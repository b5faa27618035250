"""The cuda backend on a GPU (skipped, with the reason, elsewhere): its core at every head dim it compiles, its
downsample, a whole histream_plus video against the torch engine, and compute-sanitizer over one launch of each
kernel. The Triton tests' cases for every pre-pass backend, cuda included, are in tests/kernels/test_gpu_numerics.py."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err, random_dit
from histream_engine import Engine, EngineConfig, WanConfig
from histream_engine.attention.torch_ref import TorchAttention
from histream_engine.native import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D, lq, lk", [(32, 3 * 97, 6 * 97), (64, 130, 64), (128, 3 * 510, 5 * 510), (128, 45, 1)])
def test_core_error_at_most_twice_torchs_own(dtype, D, lq, lk, device):
    from histream_engine.native.ops import attention_core

    g = torch.Generator(device=device).manual_seed(D + lq)
    q = torch.randn(2, 3, lq, D, device=device, generator=g).to(dtype)
    ring = torch.randn(2, lk + 7, 3, D, device=device, generator=g).to(dtype)  # [B, R, H, D]: K read as a strided view
    k, v = ring[:, :lk].transpose(1, 2), ring[:, :lk].flip(-1).contiguous().transpose(1, 2)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).transpose(1, 2)
    own = rel_err(F.scaled_dot_product_attention(q, k, v).transpose(1, 2), ref)
    out = attention_core(q, k, v)
    assert out.shape == (2, lq, 3, D) and not out.isnan().any()
    assert rel_err(out, ref) <= 2 * own, (rel_err(out, ref), own)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_downsample_equals_the_torch_reference(dtype, device):
    from histream_engine.native.ops import downsample_patchify

    x = torch.randn(2, 16, 3, 24, 40, device=device).to(dtype)
    want = TorchAttention().downsample_patches(x.float(), 2, (1, 2, 2)).to(dtype)
    got = downsample_patchify(x, 2, (1, 2, 2))
    assert got.shape == want.shape and rel_err(got, want) <= torch.finfo(dtype).eps


def test_histream_plus_video_matches_the_torch_engine(device):
    """bf16 engines against an fp32 torch engine: the cuda one may err at most twice as much as the bf16 torch one."""
    args = (33, 64, 96)  # 3 chunks, 8x12 high-res tokens, 4x6 low-res: both caches, a wrapped ring

    def video(attention, dtype):
        dit = random_dit("tiny", seed=8, dtype=dtype, device=device)
        return Engine(dit, EngineConfig(attention=attention)).generate(ctx.to(dtype), *args, schedule="histream_plus", seed=1)

    ctx = torch.randn(2, 5, WanConfig.from_name("tiny").text_dim, device=device)
    ref = video("torch", torch.float32).latents
    own = rel_err(video("torch", torch.bfloat16).latents, ref)
    got = video("cuda", torch.bfloat16)
    assert all(c.forwards for c in got.chunks)
    assert rel_err(got.latents, ref) <= 2 * own, (rel_err(got.latents, ref), own)


def test_compute_sanitizer_finds_no_memory_errors(device):
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        pytest.skip("compute-sanitizer is not on PATH")
    script = Path(__file__).with_name("sanitizer_launches.py")
    proc = subprocess.run([tool, "--tool", "memcheck", "--error-exitcode", "1", sys.executable, str(script), str(device)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "sanitizer launches done" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ERROR SUMMARY: 0 errors" in proc.stdout + proc.stderr
