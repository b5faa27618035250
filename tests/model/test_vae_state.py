"""The Wan VAE's causal history after latent frame n reads latent frames n - R + 1 .. n only (R = ``Decoder.reach``,
from the architecture), which an impulse on a float64 twin measures."""

import pytest
import torch

from histream_engine import VAEConfig, WanVAE
from histream_engine.model.vae import decoder_reach


def decode_in_calls(vae, latents, sizes, state=None):
    """``latents`` decoded in consecutive calls of ``sizes`` latent frames; the outputs, one per call."""
    state = vae.new_state() if state is None else state
    bounds = [0] + [sum(sizes[: i + 1]) for i in range(len(sizes))]
    return [vae.decode(latents[:, :, a:b], state) for a, b in zip(bounds, bounds[1:])]


def test_the_wan21_vae_reaches_back_38_latent_frames():
    """By hand: 11 convs (conv1, the middle's 4, stage 0's 6) and stage 0's time conv at the latent rate, 2 frames each:
    back 24; stage 1's 6 and its time conv at twice the rate: 7; stages 2 and 3's 12 and the head at 4x: 6.5. 37.5,
    which frame by frame (the upsamplers round down) is 38. The narrow twins below share the layout, hence R."""
    assert decoder_reach(VAEConfig()) == decoder_reach(VAEConfig(dim=2)) == WanVAE(VAEConfig(dim=8)).reach == 38
    assert decoder_reach(VAEConfig(dim=16, num_res_blocks=0)) == 22  # the tiny demo's: 2 + 8 + 4 + 2, 3, 2.5 -> 22


@pytest.mark.parametrize("config", [VAEConfig(dim=2), VAEConfig(dim=2, num_res_blocks=0),
                                    VAEConfig(dim=2, temporal_downsample=(True, True, False))],
                         ids=["wan21-layout", "no-res-blocks", "time-upsampling-first"])
def test_the_reach_is_what_an_impulse_measures(config):
    """A float64 twin decodes latents twice, chunk by chunk, the second time with latent frame p shifted by 1: the
    last latent frame whose 4 output frames change is exactly p + R, and every later one is bit for bit the same."""
    torch.manual_seed(0)
    vae = WanVAE(config).double().eval()
    p, R = 1, vae.reach
    latents = torch.randn(1, 16, p + R + 3, 1, 2, dtype=torch.float64)
    kicked = latents.clone()
    kicked[:, :, p] += 1.0
    sizes = [3] * (latents.shape[2] // 3) + [latents.shape[2] % 3] * (latents.shape[2] % 3 > 0)
    a = torch.cat(decode_in_calls(vae, latents, sizes), dim=2)
    b = torch.cat(decode_in_calls(vae, kicked, sizes), dim=2)
    frames_of = lambda k: slice(4 * k - 3, 4 * k + 1)  # noqa: E731 - latent frame k >= 1
    changed = [k for k in range(1, latents.shape[2]) if not torch.equal(a[:, :, frames_of(k)], b[:, :, frames_of(k)])]
    assert changed == list(range(p, p + R + 1))
