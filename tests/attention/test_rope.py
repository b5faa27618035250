import math

import torch

from conftest import rel_err
from histream_engine.attention.rope import apply_rope, axis_dims, grid_positions, inv_freqs, ntk_theta, rope_cos_sin


def test_axis_split_matches_wan():
    assert axis_dims(128) == (44, 42, 42)
    assert axis_dims(64) == (24, 20, 20)
    assert axis_dims(32) == (12, 10, 10)


def test_ntk_frequencies_equal_the_formula():
    s_h, s_w = 68 / 30, 120 / 52  # 1080p token grid over the 480x832 training grid
    f = inv_freqs(128, 10000.0, (1.0, s_h, s_w))
    for j in range(21):
        theta_h = 10000.0 * s_h ** (42 / 40)
        theta_w = 10000.0 * s_w ** (42 / 40)
        assert math.isclose(f[22 + j].item(), theta_h ** (-2 * j / 42), rel_tol=1e-12)
        assert math.isclose(f[43 + j].item(), theta_w ** (-2 * j / 42), rel_tol=1e-12)
    for j in range(22):
        assert math.isclose(f[j].item(), 10000.0 ** (-2 * j / 44), rel_tol=1e-12)  # t axis unscaled
    assert ntk_theta(10000.0, 42, 2.0) == 10000.0 * 2.0 ** 1.05


def test_scale_one_is_plain_rope_exactly():
    # fixed-device: inv_freqs builds its float64 table on the host (kernels get it through rope_table), and so does this
    plain = torch.cat([1.0 / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d) for d in (44, 42, 42)])
    assert torch.equal(inv_freqs(128), plain)
    assert torch.equal(inv_freqs(128, ntk_scale=(1.0, 1.0, 1.0)), plain)


def test_apply_rope_equals_complex_rotation_and_preserves_norm(device):
    torch.manual_seed(0)
    pos = grid_positions(range(2, 5), 3, 7, device=device)  # [63, 3]
    freqs = inv_freqs(32, 10000.0, (1.0, 1.3, 2.0)).to(device)
    x = torch.randn(2, pos.shape[0], 3, 32, device=device)
    cos, sin = rope_cos_sin(pos, freqs, torch.float64)
    got = apply_rope(x.double(), cos, sin)
    axis = torch.tensor([0] * 6 + [1] * 5 + [2] * 5, device=device)
    angle = pos[:, axis].double() * freqs  # [N, 16]
    xc = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    want = torch.view_as_real(xc * torch.polar(torch.ones_like(angle), angle)[None, :, None]).flatten(-2)
    assert rel_err(got, want) < 1e-12
    assert torch.allclose(got.norm(dim=-1), x.double().norm(dim=-1))
