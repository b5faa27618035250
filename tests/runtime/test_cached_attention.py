import math

import pytest
import torch

from conftest import rel_err, skip_where_the_interpreter_cannot_run_the_cores
from histream_engine.attention import get_backend
from histream_engine.model.dit import RMSNorm
from histream_engine.attention.rope import axis_dims, inv_freqs, ntk_theta
from histream_engine.runtime.cache.layer_attention import WindowAttention
from histream_engine.runtime.cache.kv_cache import RingKVCache
from histream_engine.runtime.cache.window import WindowPlan


def rotate_complex(x, pos, head_dim, theta, scales):
    """RoPE the way Wan writes it: complex multiply by polar(1, pos * freq), per axis, float64."""
    parts = []
    for d, s in zip(axis_dims(head_dim), scales):
        parts.append(1.0 / ntk_theta(theta, d, s) ** (torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d))
    angle = torch.cat([pos[:, a : a + 1].double() * f for a, f in enumerate(parts)], dim=1)  # [N, D/2]
    xc = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())  # [B, N, H, D/2]
    return torch.view_as_real(xc * torch.polar(torch.ones_like(angle), angle)[None, :, None]).flatten(-2)


def explicit_reference(q, store, chunk, M, anchor, grid, positions, head_dim, scales):
    """Concatenate [anchor, previous M-1 frames, chunk] K/V, rotate, plain softmax attention in float64."""
    start = chunk * M
    history = list(range(max(anchor, start - (M - 1)), start))
    frames = [f for f in range(anchor) if f < start] + history + list(range(start, start + M))
    temporal = frames if positions == "absolute" else list(range(len(frames)))
    gh, gw = grid
    device = q.device
    hw = torch.stack(torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij"), -1).reshape(-1, 2)
    pos = torch.cat([torch.cat([torch.full((gh * gw, 1), t, device=device), hw], 1) for t in temporal])  # [Lk, 3]
    k = torch.cat([store[f][0] for f in frames], dim=1)
    v = torch.cat([store[f][1] for f in frames], dim=1).double()
    qr = rotate_complex(q, pos[-M * gh * gw :], head_dim, 10000.0, scales)
    kr = rotate_complex(k, pos, head_dim, 10000.0, scales)
    scores = torch.einsum("bqhd,bkhd->bhqk", qr, kr) / math.sqrt(head_dim)
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


WINDOWS = [(positions, scales, anchor) for positions in ("absolute", "window") for scales in ((1.0, 1.0, 1.0), (1.0, 1.7, 2.3))
           for anchor in (1, 2)]


# torch and triton (the pre-pass and recache write every pre-pass backend shares) over every window kind; cudnn and auto
# put another core behind that same pre-pass, so one window of each position mode shows their cores read it right.
@pytest.mark.parametrize("backend_name, positions, scales, anchor",
                         [(b, *w) for b in ("torch", "triton") for w in WINDOWS]
                         + [(b, p, (1.0, 1.7, 2.3), 2) for b in ("cudnn", "auto") for p in ("absolute", "window")])
def test_ring_attention_equals_explicit_concatenation(backend_name, positions, scales, anchor, device):
    if backend_name == "triton":
        skip_where_the_interpreter_cannot_run_the_cores()
    torch.manual_seed(0)
    M, grid, B, H, D = 3, (3, 5), 2, 2, 32  # 15 tokens per frame, odd grid
    S = grid[0] * grid[1]
    plan = WindowPlan(chunk_size=M, anchor_frames=anchor, history_frames=M - 1, positions=positions)
    cache = RingKVCache(plan, num_layers=2, batch=B, tokens_per_frame=S, heads=H, head_dim=D, dtype=torch.float32, device=device)
    layer0_before = cache.k[0].clone()
    freqs = inv_freqs(D, 10000.0, scales)
    backend = get_backend(backend_name)
    norm_k = RMSNorm(H * D, 1e-6).to(device)
    norm_k.weight.data = torch.rand(H * D, device=device) + 0.5
    store = {}
    for c in range(6):  # 18 frames: after the anchor, a ring of 2M-1 = 5 slots wraps three times
        attn = WindowAttention(cache, cache.view(c, grid, freqs, torch.float32), backend)
        for _ in range(2):  # a noisy denoising write, then the recache that overwrites it
            q = torch.randn(B, M * S, H, D, device=device)
            k_proj, v_proj = 3 * torch.randn(B, M * S, H * D, device=device), torch.randn(B, M * S, H * D, device=device)
            out = attn(1, q, k_proj, v_proj, norm_k)
            k64 = k_proj.double()
            k = (k64 * torch.rsqrt(k64.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_k.weight.double()).unflatten(-1, (H, D))
            v = v_proj.unflatten(-1, (H, D))
            for i, f in enumerate(range(c * M, c * M + M)):
                store[f] = (k[:, i * S : (i + 1) * S], v[:, i * S : (i + 1) * S])
            ref = explicit_reference(q, store, c, M, anchor, grid, positions, D, scales)
            assert rel_err(out, ref) < 1e-5, c
    assert torch.equal(cache.k[0], layer0_before)  # other layers untouched
