import pytest
import torch

from conftest import rel_err, random_dit
from histream_engine import WanConfig, WanDiT
from histream_engine.model.keys import diffusers_to_wan, wan_to_diffusers

diffusers = pytest.importorskip("diffusers")


def diffusers_twin(dit: WanDiT):
    """diffusers' WanTransformer3DModel holding the same weights, converted with the DESIGN 3 key map."""
    cfg = {k: v for k, v in dit.config.to_diffusers_json().items() if not k.startswith("_")}
    ref = diffusers.WanTransformer3DModel(**cfg)
    ref.load_state_dict(wan_to_diffusers(dit.state_dict()), strict=True)
    return ref.eval()


@pytest.mark.parametrize(
    "config",
    [
        "tiny",
        # head_dim 48: the t/h/w RoPE split is 16/16/16; odd patch grid below.
        WanConfig(dim=96, ffn_dim=160, num_heads=2, num_layers=2, text_dim=24, freq_dim=64),
        # no cross-attn norm (diffusers always has q/k norms, so qk_norm=False has no twin there).
        WanConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=1, text_dim=16, freq_dim=32, cross_attn_norm=False),
    ],
)
def test_forward_matches_diffusers(config):
    dit = random_dit(config, seed=1)
    ref = diffusers_twin(dit)
    torch.manual_seed(2)
    B, Fr, H, W = 2, 5, 6, 14  # odd F; h=3 != w=7 tokens
    x = torch.randn(B, dit.config.in_dim, Fr, H, W)
    t = torch.tensor([[999.0, 937.5, 500.0, 12.0, 0.0], [833.3, 625.0, 250.0, 1.0, 0.0]])  # per-sample, per-frame
    ctx = torch.randn(B, 9, dit.config.text_dim)
    ours = dit(x, t, ctx)
    tokens_t = t[:, :, None].expand(B, Fr, (H // 2) * (W // 2)).reshape(B, -1)  # diffusers takes per-token t
    theirs = ref(x, tokens_t, ctx, return_dict=False)[0]
    assert ours.shape == theirs.shape == (B, dit.config.out_dim, Fr, H, W)
    assert rel_err(ours, theirs) < 1e-5


def test_per_sample_timestep_vector_matches_diffusers():
    dit = random_dit("tiny", seed=3)
    ref = diffusers_twin(dit)
    x = torch.randn(2, 16, 3, 4, 8)
    t = torch.tensor([700.0, 30.0])  # [B]
    ctx = torch.randn(2, 5, dit.config.text_dim)
    assert rel_err(dit(x, t, ctx), ref(x, t, ctx, return_dict=False)[0]) < 1e-5


def test_key_maps_invert_each_other_and_cover_every_key(tiny_dit):
    sd = tiny_dit.state_dict()
    mapped = wan_to_diffusers(sd)
    ref_keys = set(diffusers_twin(tiny_dit).state_dict())
    assert set(mapped) == ref_keys
    assert set(diffusers_to_wan(mapped)) == set(sd)


def test_real_config_tensor_and_parameter_counts():
    with torch.device("meta"):
        dit = WanDiT("wan2.1-1.3b")
    sd = dit.state_dict()
    assert len(sd) == 825
    params = sum(v.numel() for v in sd.values())
    assert abs(params - 1.419e9) / 1.419e9 < 1e-3


def test_block_causal_mask_hides_later_chunks(tiny_dit):
    torch.manual_seed(4)
    x = torch.randn(1, 16, 6, 4, 4)
    ctx = torch.randn(1, 3, tiny_dit.config.text_dim)
    base = tiny_dit(x, 500.0, ctx, block_causal=3)
    changed = x.clone()
    changed[:, :, 3:] += 1.0  # perturb the second chunk only
    out = tiny_dit(changed, 500.0, ctx, block_causal=3)
    assert rel_err(out[:, :, :3], base[:, :, :3]) == 0.0  # first chunk cannot see the second
    assert rel_err(out[:, :, 3:], base[:, :, 3:]) > 1e-3
    full = tiny_dit(changed, 500.0, ctx)  # without the mask the first chunk does see it
    assert rel_err(full[:, :, :3], base[:, :, :3]) > 1e-3


def test_bf16_cast_keeps_modulation_fp32_and_stays_close(tiny_dit):
    x = torch.randn(1, 16, 3, 4, 6)
    ctx = torch.randn(1, 4, tiny_dit.config.text_dim)
    ref = tiny_dit(x, 800.0, ctx)
    low = random_dit("tiny", dtype=torch.bfloat16)
    assert low.blocks[0].modulation.dtype == torch.float32
    assert low.time_embedding[0].weight.dtype == torch.float32
    assert low.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert rel_err(low(x, 800.0, ctx).float(), ref) < 5e-2


@pytest.mark.parametrize(
    "x_shape, t, ctx_shape, match",
    [
        ((1, 15, 3, 4, 4), 1.0, (1, 3, 32), "latents must be"),
        ((1, 16, 3, 5, 4), 1.0, (1, 3, 32), "divisible by the patch size"),
        ((1, 16, 3, 4, 4), 1.0, (1, 3, 31), "text_dim=32"),
        ((1, 16, 3, 4, 4), torch.ones(1, 2), (1, 3, 32), "per-frame"),
        ((2, 16, 3, 4, 4), 1.0, (1, 3, 32), "batch"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_dit, x_shape, t, ctx_shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_dit(torch.randn(x_shape), t, torch.randn(ctx_shape))
