import importlib.util

import pytest
import torch

from conftest import rel_err, random_dit
from histream_engine import Engine, EngineConfig, attention_backends
from histream_engine.attention import get_backend


def test_registry_lists_every_backend_with_a_reason():
    listed = {name: (ok, reason) for name, ok, reason in attention_backends()}
    assert list(listed) == ["torch", "triton", "flash_attn"]
    assert listed["torch"] == (True, "")
    assert listed["triton"][0] is True  # installed with the test extras; interpreter on CPU (conftest)
    if importlib.util.find_spec("flash_attn") is None:
        assert listed["flash_attn"] == (False, "the flash_attn package is not installed (pip install flash_attn)")


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU makes triton available")
    with pytest.raises(RuntimeError, match="triton.*unavailable: no CUDA GPU"):
        get_backend("triton")
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(RuntimeError, match="flash_attn package is not installed"):
            Engine(random_dit("tiny"), EngineConfig(attention="flash_attn"))


def test_triton_engine_equals_torch_engine():
    # histream_plus exercises both resolutions, the fused low-res recache and a wrapping ring.
    schedule = "histream_plus"
    dit = random_dit("tiny", seed=8)
    ctx = torch.randn(2, 5, dit.config.text_dim)
    args = (ctx, 33, 64, 96)  # 3 chunks, batch 2, 8x12 high-res tokens, 4x6 low-res
    ref = Engine(dit, EngineConfig(attention="torch")).generate(*args, schedule=schedule, seed=1)
    got = Engine(dit, EngineConfig(attention="triton")).generate(*args, schedule=schedule, seed=1)
    assert [c.forwards for c in got.chunks] == [c.forwards for c in ref.chunks]
    assert rel_err(got.latents, ref.latents) < 1e-4
