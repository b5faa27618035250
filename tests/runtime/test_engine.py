import pytest
import torch

from conftest import rel_err, random_dit
from histream_engine import Engine, EngineConfig, SCHEDULES
from histream_engine.runtime.denoise.sampling import renoise, sigma_of, x0_from_flow


def block_causal_reference(dit, ctx, num_chunks, M, latent_hw, schedule, seed):
    """The same sampling done with the uncached whole-sequence forward and a block-causal mask.

    Chunk c's forward runs on [clean x0 of chunks < c at t=0, noisy chunk c at t] and keeps chunk c's output.
    """
    gen = torch.Generator(device=ctx.device).manual_seed(seed)
    B = ctx.shape[0]
    shape = (B, dit.config.in_dim, M) + latent_hw
    clean, outs = [], []
    for c in range(num_chunks):
        steps = schedule.steps(c)
        x = torch.randn(shape, generator=gen, device=ctx.device)
        for i, step in enumerate(steps):
            seq = torch.cat(clean + [x], dim=2)
            t = torch.zeros(B, seq.shape[2], device=ctx.device)
            t[:, c * M :] = step.timestep
            flow = dit(seq, t, ctx, block_causal=M)[:, :, c * M :]
            x0 = x0_from_flow(x, flow, sigma_of(step.timestep))
            if i + 1 < len(steps):
                x = renoise(x0, torch.randn(shape, generator=gen, device=ctx.device), sigma_of(steps[i + 1].timestep))
        clean.append(x0)
        outs.append(x0)
    return outs


@pytest.mark.parametrize("batch, M, height, width, padded", [(1, 3, 48, 80, False), (2, 2, 32, 48, False), (2, 3, 32, 48, True)])
def test_cached_chunks_equal_block_causal_forward(batch, M, height, width, padded, device):
    """``padded``: zero rows, which the engine attends as one biased key and the reference one by one."""
    dit = random_dit("tiny", seed=5, device=device)
    torch.manual_seed(6)
    ctx = torch.randn(batch, 40 if padded else 7, dit.config.text_dim, device=device)
    if padded:
        ctx[0, 9:] = 0
        ctx[-1, 23:] = 0
    num_chunks = 3
    frames = 4 * M * num_chunks - 3
    engine = Engine(dit, EngineConfig(chunk_size=M))
    chunks = list(engine.stream(ctx, frames, height, width, schedule="self_forcing", seed=11))
    ref = block_causal_reference(dit, ctx, num_chunks, M, (height // 8, width // 8), SCHEDULES["self_forcing"], seed=11)
    assert len(chunks) == num_chunks
    for got, want in zip(chunks, ref):
        assert got.latents.shape == want.shape
        assert rel_err(got.latents, want) < 1e-5


def test_generate_concatenates_chunks_and_accounts_frames(device_dit):
    ctx = torch.randn(1, 4, device_dit.config.text_dim, device=device_dit.device)
    result = Engine(device_dit).generate(ctx, 33, 32, 32, seed=0)  # 9 latent frames, 3 chunks
    assert result.latents.shape == (1, 16, 9, 4, 4)
    assert [c.video_frames for c in result.chunks] == [9, 12, 12]
    assert result.video_frames == 33
    assert all(c.total_forwards == 5 for c in result.chunks)  # 4 steps + recache
    assert torch.isfinite(result.latents).all()
    assert result.seconds_per_frame == pytest.approx(result.seconds / 33)


def test_same_seed_reproduces_and_other_seed_differs(device_dit):
    ctx = torch.randn(1, 4, device_dit.config.text_dim, device=device_dit.device)
    engine = Engine(device_dit)
    a = engine.generate(ctx, 9, 32, 32, seed=3).latents
    b = engine.generate(ctx, 9, 32, 32, seed=3).latents
    c = engine.generate(ctx, 9, 32, 32, seed=4).latents
    assert torch.equal(a, b)
    assert rel_err(c, a) > 0.1


def test_prompt_without_batch_dim_is_accepted(device_dit):
    ctx = torch.randn(4, device_dit.config.text_dim, device=device_dit.device)
    assert Engine(device_dit).generate(ctx, 9, 32, 32).latents.shape == (1, 16, 3, 4, 4)


@pytest.mark.parametrize(
    "frames, height, width, match",
    [
        (10, 32, 32, "4k\\+1"),
        (0, 32, 32, "4k\\+1"),
        (13, 32, 32, "not a multiple of the chunk size 3"),
        (9, 40, 32, "height must be a positive multiple of 16"),
        (9, 32, 24, "width must be a positive multiple of 16"),
    ],
)
def test_bad_video_shapes_raise_clear_errors(device_dit, frames, height, width, match):
    ctx = torch.randn(1, 4, device_dit.config.text_dim, device=device_dit.device)
    with pytest.raises(ValueError, match=match):
        next(Engine(device_dit).stream(ctx, frames, height, width))


def test_wrong_prompt_width_and_unknown_names_raise(device_dit):
    with pytest.raises(ValueError, match="text_dim=32"):
        next(Engine(device_dit).stream(torch.randn(1, 4, 31, device=device_dit.device), 9, 32, 32))
    with pytest.raises(ValueError, match="unknown schedule"):
        next(Engine(device_dit).stream(torch.randn(1, 4, 32, device=device_dit.device), 9, 32, 32, schedule="nope"))
    with pytest.raises(ValueError, match="unknown attention backend"):
        Engine(device_dit, EngineConfig(attention="nope"))


def test_engine_with_vae_yields_decoded_frames_per_chunk(device_dit):
    from histream_engine import VAEConfig, WanVAE, to_uint8_frames

    torch.manual_seed(2)
    vae = WanVAE(VAEConfig(dim=8)).to(device_dit.device).eval()
    ctx = torch.randn(1, 4, device_dit.config.text_dim, device=device_dit.device)
    result = Engine(device_dit, vae=vae).generate(ctx, 33, 32, 64, schedule="histream", seed=1)
    assert [c.frames.shape for c in result.chunks] == [(1, 9, 32, 64, 3), (1, 12, 32, 64, 3), (1, 12, 32, 64, 3)]
    assert all(c.vae_seconds > 0 for c in result.chunks)
    # chunk-by-chunk streaming decode equals decoding the finished latents at once
    assert torch.equal(result.frames, to_uint8_frames(vae.decode(result.latents)))
    plain = Engine(device_dit).generate(ctx, 33, 32, 64, schedule="histream", seed=1)
    assert torch.equal(plain.latents, result.latents) and plain.frames is None


def test_lagged_decoder_releases_each_chunk_once_its_successor_is_submitted(device_dit):
    from histream_engine import VAEConfig, WanVAE
    from histream_engine.runtime.decoding import ChunkDecoder

    torch.manual_seed(3)
    vae = WanVAE(VAEConfig(dim=8)).to(device_dit.device).eval()
    ctx = torch.randn(1, 4, device_dit.config.text_dim, device=device_dit.device)
    chunks = list(Engine(device_dit).stream(ctx, 33, 32, 32, seed=2))
    inline = ChunkDecoder(vae, device_dit.device)
    lagged = ChunkDecoder(vae, device_dit.device, lag=True)  # the GPU ordering (on a CPU too)
    released = [[c.index for c in lagged.submit(chunk)] for chunk in chunks]
    assert released == [[], [0], [1]]
    assert [c.index for c in lagged.flush()] == [2]
    whole = [inline.submit(copy)[0].frames for copy in list(Engine(device_dit).stream(ctx, 33, 32, 32, seed=2))]
    assert all(torch.equal(a.frames, b) for a, b in zip(chunks, whole))


def test_vae_on_another_device_is_refused(device_dit):
    from histream_engine import VAEConfig, WanVAE

    with torch.device("meta"):  # fixed-device: a VAE on the meta device, which no model is on
        vae = WanVAE(VAEConfig(dim=8))  # fixed-device: built on the meta device by the line above
    with pytest.raises(ValueError, match="move them to one device"):
        Engine(device_dit, vae=vae)


def test_compiled_block_ops_equal_eager(device):
    """``EngineConfig(compile=True)`` runs the blocks' elementwise parts through torch.compile (inductor)."""
    dit = random_dit("tiny", seed=4, device=device)
    torch.manual_seed(1)
    ctx = torch.randn(1, 5, dit.config.text_dim, device=device)
    eager = Engine(dit).generate(ctx, 4 * 9 - 3, 32, 64, schedule="histream_plus", seed=2)
    compiled_engine = Engine(dit, EngineConfig(compile=True))
    assert compiled_engine.runner.ops.modulated_norm is not Engine(dit).runner.ops.modulated_norm
    compiled = compiled_engine.generate(ctx, 4 * 9 - 3, 32, 64, schedule="histream_plus", seed=2)
    assert rel_err(compiled.latents, eager.latents) < 1e-5
