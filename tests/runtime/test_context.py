"""Given frames as context (runtime.context): an image as latent frame 0 of chunk 0, clean at t=0 beside the noisy
frames, and a clip of whole chunks as the video's beginning; each against the uncached block-causal forward over
[the given latents at t=0] + [the noisy chunk], as the live re-cache is tested (tests/runtime/test_live.py)."""

import pytest
import torch

from conftest import random_dit, rel_err
from uncached_reference import reference_chunk
from histream_engine import SCHEDULES, Engine
from histream_engine.model.vae import VAEConfig, WanVAE, to_uint8_frames
from histream_engine.runtime.request_checks import RequestError
from histream_engine.runtime.stream_state import StreamStateError

M, H, W = 3, 64, 96
HW = {"high": (H // 8, W // 8), "low": (H // 16, W // 16)}


@pytest.fixture(scope="module")
def vae(device):
    torch.manual_seed(3)
    return WanVAE(VAEConfig(dim=8), with_encoder=True).eval().to(device)


@pytest.fixture(scope="module")
def dit(device):
    return random_dit("tiny", seed=6, device=device)


def prompt(device):
    return torch.randn(1, 5, 32, generator=torch.Generator(device=device).manual_seed(1), device=device)


def pixels(*shape, device, seed=0):
    return torch.rand(*shape, generator=torch.Generator(device=device).manual_seed(seed), device=device) * 2 - 1  # [-1, 1]


def draw(gen, sched, chunk, device):
    return [torch.randn((1, 16, M) + HW[s.resolution], generator=gen, device=device) for s in sched.steps(chunk)]


@pytest.mark.parametrize("name", ["histream", "no_drc"])
def test_an_image_is_frame_zero_clean_beside_the_noisy_frames(dit, vae, name):
    sched = SCHEDULES[name].replace(ntk=False)
    image = pixels(3, H, W, device=dit.device)
    engine = Engine(dit, vae=vae)
    chunks = list(engine.stream(prompt(dit.device), 21, H, W, schedule=sched, seed=4, context=image))
    latent = vae.encode(image[None, :, None])  # [1, 16, 1, h, w]
    assert torch.equal(chunks[0].latents[:, :, :1], latent.float())  # the given frame stays exact
    gen = torch.Generator(device=dit.device).manual_seed(4)
    # chunk 0: in one block-causal forward over itself, frame 0 clean (t=0) and frames 1, 2 noisy (the chunk's frame 0
    # noise is drawn, as every chunk draws M frames, and unused)
    want0 = reference_chunk(dit, prompt(dit.device), sched, latent, 0, draw(gen, sched, 0, dit.device), M, noisy_from=1)
    assert rel_err(chunks[0].latents[:, :, 1:], want0) <= 1e-5
    # chunk 1 attends chunk 0 (the image and what came of it) as written into the rings at t=0
    want1 = reference_chunk(dit, prompt(dit.device), sched, chunks[0].latents, 1, draw(gen, sched, 1, dit.device), M, noisy_from=0)
    assert rel_err(chunks[1].latents, want1) <= 1e-5
    assert chunks[0].frames.shape[1] == 9  # frame 0 decodes the image's latent


def test_a_clip_of_whole_chunks_is_the_videos_beginning(dit, vae):
    sched = SCHEDULES["histream"].replace(ntk=False)
    clip = pixels(3, 9, H, W, seed=2, device=dit.device)  # one chunk: 9 frames -> 3 latent frames
    engine = Engine(dit, vae=vae)
    chunks = list(engine.stream(prompt(dit.device), 33, H, W, schedule=sched, seed=4, context=clip))
    assert [c.index for c in chunks] == [1, 2] and chunks[0].prompt_switch.recache  # the clip's frames were re-cached
    latents = vae.encode(clip[None]).float()  # [1, 16, 3, h, w]
    gen = torch.Generator(device=dit.device).manual_seed(4)  # the noise starts at the first generated chunk
    want = reference_chunk(dit, prompt(dit.device), sched, latents, 1, draw(gen, sched, 1, dit.device), M, noisy_from=0)
    assert rel_err(chunks[0].latents, want) <= 1e-5
    # the decoder goes on from the clip: the frames equal decoding the clip and the new latents as one video
    whole = to_uint8_frames(vae.decode(torch.cat([latents] + [c.latents for c in chunks], dim=2)))  # [1, 33, H, W, 3]
    assert torch.equal(torch.cat([c.frames for c in chunks], dim=1), whole[:, 9:])


def test_context_that_does_not_fit_the_request_is_refused_with_the_sizes(dit, vae):
    engine = Engine(dit, vae=vae)
    ctx = prompt(dit.device)
    with pytest.raises(RequestError, match="96x64 but the request is 128x64"):
        engine.stream(ctx, 21, 64, 128, schedule="histream", context=pixels(3, H, W, device=dit.device))
    with pytest.raises(RequestError, match="clip of 10 frames.*9, 21, 33"):
        engine.stream(ctx, 33, H, W, schedule="histream", context=pixels(3, 10, H, W, device=dit.device))
    with pytest.raises(RequestError, match=r"in \[-1, 1\]"):
        engine.stream(ctx, 21, H, W, schedule="histream", context=pixels(3, H, W, device=dit.device) * 3)
    with pytest.raises(RequestError, match="image \\[3, H, W\\] or a clip"):
        engine.stream(ctx, 21, H, W, schedule="histream", context=pixels(4, H, W, device=dit.device))
    with pytest.raises(StreamStateError, match="counts the clip's frames"):
        engine.stream(ctx, 9, H, W, schedule="histream", context=pixels(3, 9, H, W, device=dit.device))
    with pytest.raises(StreamStateError, match="sliding-window schedule"):
        engine.stream(ctx, 21, H, W, schedule="self_forcing", context=pixels(3, 9, H, W, device=dit.device))
    no_encoder = WanVAE(VAEConfig(dim=8)).eval().to(dit.device)
    with pytest.raises(RequestError, match=r"without its encoder.*load_vae\(\.\.\., encoder=True\)"):
        Engine(dit, vae=no_encoder).stream(ctx, 21, H, W, schedule="histream", context=pixels(3, H, W, device=dit.device))
    with pytest.raises(RequestError, match="has none"):
        Engine(dit).stream(ctx, 21, H, W, schedule="histream", context=pixels(3, H, W, device=dit.device))
