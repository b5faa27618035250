import pytest
import torch

from histream_engine.runtime.denoise.sampling import renoise, warp_timesteps, x0_from_flow


def test_warped_timesteps():
    assert warp_timesteps([1000, 750, 500, 250], shift=5.0) == pytest.approx([1000.0, 937.5, 2500 / 3, 625.0], abs=1e-9)
    assert warp_timesteps([1000, 500], shift=5.0) == pytest.approx([1000.0, 2500 / 3], abs=1e-9)
    assert warp_timesteps([300], shift=1.0) == pytest.approx([300.0])


def test_warp_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        warp_timesteps([0])
    with pytest.raises(ValueError, match="outside"):
        warp_timesteps([1001])


def test_x0_and_renoise_on_numbers(device):
    x_t = torch.tensor([1.0, -2.0], device=device)
    v = torch.tensor([0.5, 4.0], device=device)
    # x0 = x_t - sigma * v with sigma = 0.625
    assert torch.allclose(x0_from_flow(x_t, v, 0.625), torch.tensor([0.6875, -4.5], device=device))
    x0 = torch.tensor([2.0, -1.0], device=device)
    eps = torch.tensor([1.0, 3.0], device=device)
    # (1 - 0.25) * x0 + 0.25 * eps
    assert torch.allclose(renoise(x0, eps, 0.25), torch.tensor([1.75, 0.0], device=device))


def test_flow_identity_recovers_x0(device):
    torch.manual_seed(0)
    x0, eps = torch.randn(100, device=device), torch.randn(100, device=device)
    sigma = 0.8333
    x_t = renoise(x0, eps, sigma)
    assert torch.allclose(x0_from_flow(x_t, eps - x0, sigma), x0, atol=1e-6)
