import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err, random_dit
from histream_engine import SCHEDULES, Engine, EngineConfig, WanConfig
from histream_engine.runtime.denoise.sampling import renoise, sigma_of, x0_from_flow


def agsw_frame_mask(num_frames, M, device, anchor=1):
    """[F, F]: a frame of chunk k sees the anchor frames, the M-1 frames before chunk k, and chunk k."""
    mask = torch.zeros(num_frames, num_frames, dtype=torch.bool, device=device)
    for i in range(num_frames):
        start = (i // M) * M
        for j in range(num_frames):
            mask[i, j] = j < anchor or start - (M - 1) <= j < start + M
    return mask


def histream_reference(dit, ctx, sched, num_chunks, M, high_hw, seed):
    """DRC + AGSW + NTK with the uncached whole-sequence forward: each step re-runs every earlier clean frame
    (at that step's resolution, t=0) under the frame-level window mask."""
    gen = torch.Generator(device=dit.device).manual_seed(seed)
    B, r = ctx.shape[0], sched.low_factor
    hw = {"high": high_hw, "low": (high_hw[0] // r, high_hw[1] // r)}
    train = dit.config.train_grid
    ntk = {k: (1.0, max(1.0, h / 2 / train[0]), max(1.0, w / 2 / train[1])) for k, (h, w) in hw.items()}
    clean = {"high": [], "low": []}
    out = []
    for c in range(num_chunks):
        steps, x0, prev = sched.steps(c), None, None
        for step in steps:
            sigma = sigma_of(step.timestep)
            eps = torch.randn((B, 16, M) + hw[step.resolution], generator=gen, device=dit.device)
            if x0 is None:
                x = eps
            else:
                base = x0 if step.resolution == prev else F.interpolate(x0, scale_factor=(1, r, r), mode="trilinear")
                x = renoise(base, eps, sigma)
            seq = torch.cat(clean[step.resolution] + [x], dim=2)
            t = torch.zeros(B, seq.shape[2], device=dit.device)
            t[:, c * M :] = step.timestep
            mask = agsw_frame_mask(seq.shape[2], M, dit.device)
            flow = dit(seq, t, ctx, frame_mask=mask, ntk_scale=ntk[step.resolution])[:, :, c * M :]
            x0, prev = x0_from_flow(x, flow, sigma), step.resolution
        clean["high"].append(x0)
        clean["low"].append(F.avg_pool3d(x0, (1, r, r)))
        out.append(x0)
    return out


@pytest.mark.parametrize("name", ["histream", "histream_plus"])
def test_histream_equals_uncached_windowed_reference(name, device):
    # A training grid smaller than the test grid, so NTK scaling is active at both resolutions.
    dit = random_dit(WanConfig.from_name("tiny").replace(train_grid=(2, 3)), seed=7, device=device)
    ctx = torch.randn(1, 6, dit.config.text_dim, device=device)
    M, chunks, H, W = 3, 4, 96, 160  # high latent 12x20 -> 6x10 tokens; low 3x5 tokens
    got = list(Engine(dit).stream(ctx, 4 * M * chunks - 3, H, W, schedule=name, seed=3))
    want = histream_reference(dit, ctx, SCHEDULES[name], chunks, M, (H // 8, W // 8), seed=3)
    for a, b in zip(got, want):
        assert rel_err(a.latents, b) < 1e-5


def test_histream_without_drc_and_full_window_is_self_forcing(device_dit):
    ctx = torch.randn(1, 5, device_dit.config.text_dim, device=device_dit.device)
    high_only = SCHEDULES["self_forcing"].first
    no_drc = SCHEDULES["histream"].replace(name="histream_no_drc", first=high_only, later=high_only)
    engine = Engine(device_dit)
    # Two chunks: anchor + M-1 history + chunk covers the whole 6-frame video.
    a = engine.generate(ctx, 21, 64, 96, schedule=no_drc, seed=5)
    b = engine.generate(ctx, 21, 64, 96, schedule="self_forcing", seed=5)
    assert torch.equal(a.latents, b.latents)
    # On a longer video the window drops frames, so the two must differ.
    c = engine.generate(ctx, 33, 64, 96, schedule=no_drc, seed=5)
    d = engine.generate(ctx, 33, 64, 96, schedule="self_forcing", seed=5)
    assert torch.equal(c.latents[:, :, :6], d.latents[:, :, :6])
    assert rel_err(c.latents[:, :, 6:], d.latents[:, :, 6:]) > 1e-4


def test_cache_is_constant_for_sliding_window_and_grows_for_full(device):
    dit = random_dit("tiny", device=device)
    ctx = torch.randn(1, 3, dit.config.text_dim, device=device)
    engine = Engine(dit)
    frames = 4 * 3 * 61 - 3  # 61 chunks
    chunks = list(engine.stream(ctx, frames, 32, 32, schedule="histream_plus"))
    assert chunks[3].cache_bytes == chunks[60].cache_bytes > 0
    assert chunks[3].tokens_attended == chunks[60].tokens_attended
    short = next(iter(engine.stream(ctx, 33, 32, 32, schedule="histream_plus")))
    assert short.cache_bytes == chunks[0].cache_bytes  # independent of video length
    full_short = next(iter(engine.stream(ctx, 33, 32, 32, schedule="self_forcing")))
    full_long = next(iter(engine.stream(ctx, 69, 32, 32, schedule="self_forcing")))
    assert full_long.cache_bytes == 2 * full_short.cache_bytes


@pytest.mark.parametrize(
    "name, chunk, forwards, recache",
    [
        ("histream", 0, {"low": 2, "high": 2}, {"low": 1, "high": 1}),
        ("histream", 3, {"low": 2, "high": 2}, {"low": 1, "high": 1}),
        ("histream_plus", 0, {"low": 2, "high": 2}, {"low": 1, "high": 1}),
        ("histream_plus", 3, {"low": 1, "high": 1}, {"low": 1, "high": 1}),
        ("self_forcing", 3, {"low": 0, "high": 4}, {"low": 0, "high": 1}),
        ("two_step", 0, {"low": 1, "high": 1}, {"low": 1, "high": 1}),
    ],
)
def test_forwards_per_chunk_follow_the_schedule(device_dit, name, chunk, forwards, recache):
    ctx = torch.randn(1, 3, device_dit.config.text_dim, device=device_dit.device)
    chunks = list(Engine(device_dit).stream(ctx, 45, 64, 64, schedule=name))
    assert chunks[chunk].forwards == forwards
    assert chunks[chunk].recache == recache


def test_tokens_attended_count_the_window(device_dit):
    ctx = torch.randn(1, 3, device_dit.config.text_dim, device=device_dit.device)
    chunks = list(Engine(device_dit).stream(ctx, 45, 64, 64, schedule="histream"))
    s_high, s_low = 4 * 4, 2 * 2  # tokens per latent frame at 64x64 and 32x32
    # chunk 0 sees its 3 frames; chunk 3 sees anchor + 2 history + 3 = 6 frames; 3 forwards at each res
    assert chunks[0].tokens_attended == 3 * 3 * (s_high + s_low)
    assert chunks[3].tokens_attended == 3 * 6 * (s_high + s_low)


def test_absolute_positions_past_rope_table_name_window(device_dit):
    ctx = torch.randn(1, 3, device_dit.config.text_dim, device=device_dit.device)
    frames = 4 * 1026 - 3  # 1026 latent frames
    with pytest.raises(ValueError, match="positions='window'"):
        Engine(device_dit).stream(ctx, frames, 32, 32, schedule="histream")
    windowed = SCHEDULES["histream"].replace(positions="window")
    stream = Engine(device_dit).stream(ctx, frames, 32, 32, schedule=windowed)
    assert next(stream).latents.shape == (1, 16, 3, 4, 4)


def test_low_res_needs_twice_the_alignment(device_dit):
    ctx = torch.randn(1, 3, device_dit.config.text_dim, device=device_dit.device)
    Engine(device_dit).stream(ctx, 9, 48, 48, schedule="self_forcing")
    with pytest.raises(ValueError, match="multiple of 32"):
        Engine(device_dit).stream(ctx, 9, 48, 64, schedule="histream")


def test_schedules_load_from_dict_and_json(tmp_path, device_dit):
    ctx = torch.randn(1, 3, device_dit.config.text_dim, device=device_dit.device)
    data = SCHEDULES["histream_plus"].to_dict()
    path = tmp_path / "s.json"
    import json

    path.write_text(json.dumps(data))
    engine = Engine(device_dit)
    a = engine.generate(ctx, 21, 64, 64, schedule="histream_plus").latents
    assert torch.equal(engine.generate(ctx, 21, 64, 64, schedule=data).latents, a)
    assert torch.equal(engine.generate(ctx, 21, 64, 64, schedule=str(path)).latents, a)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"first": [["high", 900]], "later": [["low", 900]]}, "last step be high-res"),
        ({"first": [["high", 500], ["high", 900]], "later": [["high", 900]]}, "strictly decrease"),
        ({"first": [["mid", 900]], "later": [["high", 900]]}, "resolution"),
        ({"first": [["high", 900]], "later": [["high", 900]], "window": "ring"}, "window"),
        ({"first": [["high", 900]], "later": [["high", 900]], "colour": 1}, "unknown schedule fields"),
        ({"later": [["high", 900]]}, "invalid schedule"),
    ],
)
def test_bad_schedules_raise(device_dit, data, match):
    with pytest.raises(ValueError, match=match):
        Engine(device_dit).stream(torch.randn(1, 3, 32, device=device_dit.device), 9, 64, 64, schedule=data)


def test_every_preset_runs(device_dit):
    ctx = torch.randn(1, 3, device_dit.config.text_dim, device=device_dit.device)
    assert set(SCHEDULES) == {"self_forcing", "histream", "histream_plus", "no_drc", "no_agsw", "two_step"}
    for name in SCHEDULES:
        out = Engine(device_dit, EngineConfig(chunk_size=3)).generate(ctx, 21, 64, 64, schedule=name).latents
        assert out.shape == (1, 16, 6, 8, 8) and torch.isfinite(out).all()
