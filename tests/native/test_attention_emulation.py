"""The attention core's block algorithm on the host: ldmatrix and mma.sync emulated from the PTX ISA over 32 lanes,
every address, swizzle, fragment index, mask and softmax step from the kernel's own index math (csrc/emulation.h).
Compared with float64 attention on awkward sizes; the error must stay within twice torch's own in that precision."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from histream_engine.native import built_reason, extension

pytestmark = pytest.mark.skipif(built_reason() is not None, reason=built_reason() or "")

CODES = {torch.float16: 1, torch.bfloat16: 2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "B, H, lq, lk, D",
    [
        (1, 2, 3 * 97, 6 * 97, 32),  # 97 tokens per frame: partial query and key blocks
        (2, 1, 130, 64, 64),  # keys fill whole blocks, 2 queries past a 128-row block
        (1, 1, 45, 500, 128),  # the real head dim, one partial query block
        (1, 3, 200, 1, 64),  # a single key: every block is the masked tail
    ],
)
def test_emulated_core_matches_float64(dtype, B, H, lq, lk, D):
    # fixed-device: the emulation runs on the host, from numpy arrays, and so do its float64 and torch references
    g = torch.Generator().manual_seed(lq * lk + D)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype) for n in (lq, lk, lk))  # fixed-device: host emulation
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).transpose(1, 2)  # [B, Lq, H, D]
    own = rel_err(F.scaled_dot_product_attention(q, k, v).transpose(1, 2), ref)
    out = extension().host.emulate_attention_core(q.float().numpy(), k.float().numpy(), v.float().numpy(),
                                                  dtype=CODES[dtype], qk_scale_log2=math.log2(math.e) / math.sqrt(D))
    out = torch.from_numpy(out)  # fixed-device: the host emulation's output
    assert out.shape == (B, lq, H, D) and not out.isnan().any()
    assert rel_err(out, ref) <= 2 * own, (rel_err(out, ref), own)


def test_emulation_refuses_unsupported_shapes():
    x = torch.zeros(1, 1, 4, 48).numpy()  # fixed-device: the host emulation takes numpy arrays
    with pytest.raises(ValueError, match="head_dim must be 32, 64 or 128"):
        extension().host.emulate_attention_core(x, x, x, dtype=1, qk_scale_log2=1.0)
