import pytest
import torch

from conftest import random_dit
from histream_engine import Engine, WanConfig, flops


def test_design_1080p_and_544p_forward_figures():
    cfg = WanConfig.from_name("wan2.1-1.3b")
    f = flops.forward_flops(cfg, query_tokens=3 * 8160, key_tokens=6 * 8160)
    assert f.total == pytest.approx(284.6e12, rel=0.01)
    assert f.linear == pytest.approx(61.2e12, rel=0.01)
    assert f.self_attn == pytest.approx(220.9e12, rel=0.01)
    assert f.cross_attn == pytest.approx(2.3e12, rel=0.01)
    low = flops.forward_flops(cfg, query_tokens=3 * 2040, key_tokens=6 * 2040)
    assert low.total == pytest.approx(29.8e12, rel=0.01)
    assert flops.tokens_per_frame(cfg, 1088, 1920) == 8160
    assert flops.tokens_per_frame(cfg, 544, 960) == 2040


def test_sliding_window_chunks_cost_the_same_full_cache_grows():
    cfg = WanConfig.from_name("wan2.1-1.3b")
    hs = flops.schedule_flops(cfg, "histream", 81, 1088, 1920)
    sf = flops.schedule_flops(cfg, "self_forcing", 81, 1088, 1920)
    assert hs[2].total == hs[6].total
    assert all(a.total < b.total for a, b in zip(sf, sf[1:]))
    # the steady histream chunk: 2 low + 2 high forwards over 6 frames, plus one recache at each resolution
    high = flops.forward_flops(cfg, 3 * 8160, 6 * 8160)
    low = flops.forward_flops(cfg, 3 * 2040, 6 * 2040)
    assert hs[6].denoise.total == pytest.approx(2 * high.total + 2 * low.total)
    ratio = flops.flops_per_frame(cfg, "self_forcing", 81, 1088, 1920) / flops.flops_per_frame(cfg, "histream", 81, 1088, 1920)
    assert 2.0 < ratio < 3.5
    assert flops.flops_per_frame(cfg, "histream_plus", 81, 1088, 1920) < flops.flops_per_frame(cfg, "histream", 81, 1088, 1920)


@pytest.mark.parametrize("schedule", ["self_forcing", "no_drc"])
def test_self_attention_flops_agree_with_the_runtime_token_count(schedule):
    dit = random_dit("tiny")
    cfg = dit.config
    ctx = torch.randn(1, 4, cfg.text_dim)
    chunks = list(Engine(dit).stream(ctx, 45, 64, 96, schedule=schedule))
    model = flops.schedule_flops(cfg, schedule, 45, 64, 96)
    S = flops.tokens_per_frame(cfg, 64, 96)
    L = cfg.num_layers
    for run, est in zip(chunks, model):
        keys = run.tokens_attended // (sum(run.forwards.values()) + sum(run.recache.values()))  # one resolution here
        assert est.denoise.self_attn == 4 * 3 * S * keys * cfg.dim * L * sum(run.forwards.values())
        assert est.recache.self_attn == 4 * 3 * S * keys * cfg.dim * (L - 1) * sum(run.recache.values())  # last layer: K/V only
        assert run.video_frames == est.video_frames


def test_recache_pass_counts_only_the_last_layers_kv():
    cfg = WanConfig.from_name("wan2.1-1.3b")
    full = flops.forward_flops(cfg, 3 * 8160, 6 * 8160)
    cache = flops.forward_flops(cfg, 3 * 8160, 6 * 8160, cache_only=True)
    d, f, L, n = cfg.dim, cfg.ffn_dim, cfg.num_layers, 3 * 8160
    head = 2 * d * cfg.out_dim * cfg.patch_volume * n
    assert full.linear - cache.linear == head + n * (2 * (6 * d * d + 2 * d * f) - 4 * d * d)
    assert cache.self_attn == full.self_attn * (L - 1) / L


def test_vae_decoder_flops_per_1080p_frame():
    assert flops.vae_flops_per_frame(1088, 1920) == pytest.approx(18e12, rel=0.02)
    # convolutions scale with pixels; the mid-block attention with pixels squared
    assert flops.vae_flops_per_frame(544, 960) < flops.vae_flops_per_frame(1088, 1920) / 4


def test_taehv_flops_per_frame_are_counted_layer_by_layer():
    """taew2_1 per latent frame at 1080p, by hand: the layers at each stage's resolution and frame count."""
    hw = (1088 // 8) * (1920 // 8)
    conv = lambda px, cin, cout, k=9: 2.0 * px * cin * cout * k
    mem = lambda px, c: 3 * (conv(px, 2 * c, c) + 2 * conv(px, c, c))
    per_latent = (conv(hw, 16, 256) + mem(hw, 256) + conv(4 * hw, 256, 256, 1) + conv(4 * hw, 256, 128)
                  + mem(4 * hw, 128) + conv(16 * hw, 128, 256, 1)  # TGrow x2: 2 frames from here
                  + 2 * (conv(16 * hw, 128, 64) + mem(16 * hw, 64) + conv(64 * hw, 64, 128, 1))  # TGrow x2: 4 frames
                  + 4 * (conv(64 * hw, 64, 64) + conv(64 * hw, 64, 3)))
    assert flops.taehv_flops_per_frame(1088, 1920) == pytest.approx(per_latent / 4, rel=1e-12)
    assert flops.vae_flops_per_frame(1088, 1920) / flops.taehv_flops_per_frame(1088, 1920) > 20


def test_precision_peak_weighs_each_part_by_its_own_peak():
    # 300 FLOP: 60 linear, 220 self-attention, 20 cross-attention; bf16 at 1000 FLOP/s, FP8 at 2000
    f = flops.Flops(linear=60.0, self_attn=220.0, cross_attn=20.0)
    assert flops.precision_peak(f, 1000.0, 2000.0, False, False) == pytest.approx(1000.0)  # nothing FP8: 300 / 0.3 s
    assert flops.precision_peak(f, 1000.0, 2000.0, True, False) == pytest.approx(300 / (60 / 2000 + 240 / 1000))  # 1111.1
    assert flops.precision_peak(f, 1000.0, 2000.0, False, True) == pytest.approx(300 / (220 / 2000 + 80 / 1000))  # 1578.9
    assert flops.precision_peak(f, 1000.0, 2000.0, True, True) == pytest.approx(1875.0)  # 300 / (0.14 + 0.02)
    # the 1080p forward on an H100 (989 / 1979 TFLOP/s dense): all but cross-attention's 2.3 of 284.5 TFLOP run at the
    # FP8 peak, so the mix's peak is 99.2% of it (284.5 / (282.1 / 1979 + 2.3 / 989))
    cfg = WanConfig.from_name("wan2.1-1.3b")
    full = flops.forward_flops(cfg, query_tokens=3 * 8160, key_tokens=6 * 8160)
    peak = flops.precision_peak(full, 989e12, 1979e12, True, True)
    assert peak == pytest.approx(0.9919 * 1979e12, rel=1e-4)
