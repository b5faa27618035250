import math

import pytest
import torch

from conftest import rel_err, random_dit
from histream_engine.attention import get_backend
from histream_engine.model.dit import EAGER_OPS, FFNWorkspace, engine_ops, merge_zero_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ffn_workspace_equals_the_module(dtype):
    """float32 on a CPU takes oneDNN's fused matmul + GELU; float64 (as fp16 or a GPU would) the in-place workspace."""
    dit = random_dit("tiny", seed=3, dtype=dtype)
    ffn = dit.blocks[0].ffn
    workspace = FFNWorkspace()
    torch.manual_seed(0)
    for shape in ((2, 3, 15, 64), (1, 3, 97, 64), (2, 3, 15, 64)):
        h = torch.randn(shape, dtype=dtype)
        out = workspace(ffn, h)
        assert out.shape == shape and out.dtype == dtype and rel_err(out, ffn(h)) < 1e-6
    fused = dtype == torch.float32 and torch.backends.mkldnn.is_available()
    # one buffer per token count when the workspace is used; the third call reused the first
    assert {tuple(b.shape) for b in workspace._buffers.values()} == (set() if fused else {(90, 128), (291, 128)})


def test_engine_ops_route_the_ffn_through_a_workspace():
    assert isinstance(engine_ops().feed_forward, FFNWorkspace)
    assert engine_ops().feed_forward is not engine_ops().feed_forward  # one workspace per engine
    assert EAGER_OPS.feed_forward is not None and not isinstance(EAGER_OPS.feed_forward, FFNWorkspace)


def test_cache_only_pass_writes_the_same_kv_and_stops_after_the_last_write():
    """A recache pass hands every layer the same K/V as a full forward, and the last layer no queries."""
    dit = random_dit("tiny", seed=4)
    torch.manual_seed(1)
    tokens = torch.randn(1, 3, 4, 5, dit.config.dim)  # [B, F, h, w, C]
    t = torch.zeros(1, 3)
    cross_kv = dit.cross_kv(torch.randn(1, 7, dit.config.text_dim))

    def recorder(log):
        def attend(layer, q, k_proj, v_proj, norm_k):
            log.append((layer, q is None, k_proj.clone(), v_proj.clone()))
            return None if q is None else q  # any [B, L, H, D] will do for the next layer's input here
        return attend

    full, cached = [], []
    assert dit.forward_tokens(tokens, t, cross_kv, recorder(full)).shape[1] == dit.config.out_dim
    assert dit.forward_tokens(tokens, t, cross_kv, recorder(cached), cache_only=True) is None
    layers = dit.config.num_layers
    assert [(layer, no_q) for layer, no_q, _k, _v in cached] == [(i, i == layers - 1) for i in range(layers)]
    for (_, _, k_full, v_full), (_, _, k_cached, v_cached) in zip(full, cached):
        assert torch.equal(k_full, k_cached) and torch.equal(v_full, v_cached)


def test_zero_rows_merge_into_one_biased_key_with_the_same_attention():
    """Wan pads prompts with zero rows: attending them once with log(n) on the logit is attending all n."""
    dit = random_dit("tiny", seed=6)
    torch.manual_seed(2)
    ctx = torch.randn(3, 40, dit.config.text_dim)
    ctx[0, 9:] = 0  # 9 real rows, 31 padding
    ctx[1, 25:] = 0  # 25 real rows
    ctx[1, 3] = 0  # a zero row inside the prompt is padding too: it embeds to the same K/V
    # ctx[2]: no padding at all
    merged, bias = merge_zero_rows(ctx, torch.float32)
    assert merged.shape == (3, 41, dit.config.text_dim) and bias.shape == (3, 1, 1, 41)
    assert bias[0, 0, 0, 9:40].eq(float("-inf")).all() and bias[0, 0, 0, 40].item() == pytest.approx(math.log(31))
    assert bias[1, 0, 0, 40].item() == pytest.approx(math.log(16)) and bias[2, 0, 0, 40].item() == float("-inf")
    full, short = dit.cross_kv(ctx, merge_padding=False), dit.cross_kv(ctx)
    q = torch.randn(3, 50, dit.config.num_heads, dit.config.head_dim)
    attn = get_backend("torch")
    for (k, v, none), (km, vm, b) in zip(full, short):
        assert none is None and km.shape[1] == 41
        assert rel_err(attn.cross_attention(q, km, vm, b), attn.cross_attention(q, k, v)) < 1e-6
    assert merge_zero_rows(ctx[2:], torch.float32)[1] is None  # nothing to merge
    assert merge_zero_rows(ctx, torch.bfloat16)[1] is None  # bf16 cannot carry log(n) closely enough

