import importlib.util

import pytest
import torch

from conftest import rel_err, random_dit, skip_where_the_interpreter_cannot_run_the_cores
from histream_engine import Engine, EngineConfig, attention_backends
from histream_engine.attention import get_backend
from histream_engine.attention.auto import AUTO_CHOICES, ReferenceFallback
from histream_engine.attention.prepass_backend import PrepassAttention


def test_registry_lists_every_backend_with_a_reason():
    listed = {name: (ok, reason) for name, ok, reason in attention_backends()}
    assert list(listed) == ["torch", "triton", "cuda", "cudnn", "flash_attn", "torch_fp8", "triton_fp8", "auto"]
    assert listed["torch"] == (True, "") and listed["auto"] == (True, "")
    assert listed["triton"][0] is True  # installed with the test extras; interpreter on CPU (conftest)
    assert listed["cudnn"][0] is True  # on CPU under the interpreter SDPA's CPU kernel stands in
    from histream_engine.native import built_reason

    if built_reason() is not None:
        assert listed["cuda"] == (False, built_reason()) and listed["cuda"][1].startswith("histream_engine._C was not built")
    elif not torch.cuda.is_available():
        assert listed["cuda"][0] is False and listed["cuda"][1].startswith("histream_engine._C is built (for sm ")
        assert listed["cuda"][1].endswith("but no CUDA GPU is visible")
    if importlib.util.find_spec("flash_attn") is None and importlib.util.find_spec("flash_attn_interface") is None:
        assert listed["flash_attn"] == (False, "neither FlashAttention-3 (flash_attn_interface) nor FlashAttention-2 (pip install flash_attn) is installed")


def test_unavailable_backend_says_why(monkeypatch, device):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU makes triton available")
    for name in ("triton", "cudnn"):
        with pytest.raises(RuntimeError, match=f"{name}.*unavailable: no CUDA GPU"):
            get_backend(name)
    if importlib.util.find_spec("flash_attn") is None and importlib.util.find_spec("flash_attn_interface") is None:
        with pytest.raises(RuntimeError, match="flash_attn.*unavailable: neither FlashAttention-3"):
            Engine(random_dit("tiny", device=device), EngineConfig(attention="flash_attn"))
    with pytest.raises(ValueError, match="unknown attention backend 'fa3'.*registered"):
        get_backend("fa3")


def test_auto_without_any_core_falls_back_to_the_reference_and_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU makes the cores available")
    backend = get_backend("auto")
    assert isinstance(backend, ReferenceFallback)
    assert "triton: no CUDA GPU" in backend.reason and backend.reason.endswith("using the torch reference")


@pytest.mark.parametrize("attention", ["triton", "cudnn", "auto"])
def test_prepass_engines_equal_torch_engine(attention, device):
    if attention == "triton":  # auto falls back to cudnn where triton fails; it times both in the test below
        skip_where_the_interpreter_cannot_run_the_cores()
    # histream_plus exercises both resolutions, the fused low-res recache and a wrapping ring.
    schedule = "histream_plus"
    dit = random_dit("tiny", seed=8, device=device)
    ctx = torch.randn(2, 5, dit.config.text_dim, device=device)
    args = (ctx, 33, 64, 96)  # 3 chunks, batch 2, 8x12 high-res tokens, 4x6 low-res
    ref = Engine(dit, EngineConfig(attention="torch")).generate(*args, schedule=schedule, seed=1)
    engine = Engine(dit, EngineConfig(attention=attention))
    assert isinstance(engine.attention, PrepassAttention) and engine.attention.name == attention
    got = engine.generate(*args, schedule=schedule, seed=1)
    assert [c.forwards for c in got.chunks] == [c.forwards for c in ref.chunks]
    assert rel_err(got.latents, ref.latents) < 1e-4


def test_auto_measures_each_shape_once_per_process(device):
    skip_where_the_interpreter_cannot_run_the_cores()
    dit = random_dit("tiny", seed=8, device=device)
    ctx = torch.randn(1, 5, dit.config.text_dim, device=device)
    AUTO_CHOICES.clear()
    Engine(dit, EngineConfig(attention="auto")).generate(ctx, 21, 64, 64, schedule="two_step")
    # two resolutions x (first chunk: 3 visible frames, later: 6): four shapes, each timed on both cores
    choices = dict(AUTO_CHOICES)
    assert len(choices) == 4
    for choice in choices.values():
        assert set(choice.seconds) == {"triton", "cudnn"} and choice.core in choice.seconds
        assert all(s > 0 for s in choice.seconds.values())
    Engine(dit, EngineConfig(attention="auto")).generate(ctx, 21, 64, 64, schedule="two_step")
    assert AUTO_CHOICES == choices and all(AUTO_CHOICES[k] is choices[k] for k in choices)  # nothing re-measured
