"""The Python API's bad-input table: each row a call, the exception type it must raise and a fragment of its message
(never a bare AttributeError/KeyError, never a silent coercion), plus the per-chunk finiteness check of the latents."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from histream_engine.checkpoint import CheckpointError
from histream_engine.host import HostRequest
from histream_engine.runtime import Engine, EngineConfig
from histream_engine.runtime.denoise.finite_check import NonFiniteLatents, check_finite_latents
from histream_engine.runtime.request_checks import RequestError, RequestTypeError, resolve_device
from histream_engine.runtime.denoise.schedules import SCHEDULES, Schedule

GOOD = {"frames": 9, "height": 16, "width": 16, "schedule": "self_forcing"}  # one chunk of the tiny model


def stream(engine, embeds=None, **over):
    req = {**GOOD, "seed": 0, **over}
    embeds = engine.default_prompt[:, :8] if embeds is None else embeds
    return engine.engine.stream(embeds, req["frames"], req["height"], req["width"], schedule=req["schedule"], seed=req["seed"])


def bad_schedule(**over):
    return {**SCHEDULES["self_forcing"].to_dict(), **over}


# (id, call(host) -> anything, exception type, message fragment)
ROWS = [
    ("embeds_list", lambda h: stream(h, [[0.0] * 32] * 4), RequestTypeError, "must be a torch.Tensor"),
    ("embeds_numpy", lambda h: stream(h, np.zeros((4, 32), np.float32)), RequestTypeError, "got ndarray"),
    ("embeds_complex", lambda h: stream(h, torch.zeros(4, 32, dtype=torch.complex64)), RequestError, "must be a real floating"),
    ("embeds_int", lambda h: stream(h, torch.zeros(4, 32, dtype=torch.int64)), RequestError, "got int64"),
    ("embeds_nan", lambda h: stream(h, torch.full((4, 32), float("nan"))), RequestError, "NaN or Inf"),
    ("embeds_inf", lambda h: stream(h, torch.tensor([float("inf")] * 32).repeat(4, 1)), RequestError, "128 NaN or Inf"),
    ("embeds_batch0", lambda h: stream(h, torch.zeros(0, 4, 32)), RequestError, "batch >= 1"),
    ("embeds_no_tokens", lambda h: stream(h, torch.zeros(1, 0, 32)), RequestError, ">= 1 token"),
    ("embeds_width", lambda h: stream(h, torch.zeros(4, 33)), RequestError, "[L, text_dim=32] or [B, L, text_dim=32]"),
    ("embeds_4d", lambda h: stream(h, torch.zeros(1, 1, 4, 32)), RequestError, "got shape (1, 1, 4, 32)"),
    ("seed_negative", lambda h: stream(h, seed=-1), RequestError, "[0, 2**63)"),
    ("seed_huge", lambda h: stream(h, seed=2**63), RequestError, "[0, 2**63)"),
    ("seed_float", lambda h: stream(h, seed=1.5), RequestTypeError, "seed must be an integer"),
    ("frames_form", lambda h: stream(h, frames=10), ValueError, "4k+1"),
    ("frames_chunks", lambda h: stream(h, frames=13), ValueError, "not a multiple of the chunk size"),
    ("frames_str", lambda h: stream(h, frames="9"), ValueError, "got '9'"),
    ("size_unit", lambda h: stream(h, height=40), ValueError, "height must be a positive multiple of 16"),
    ("size_low_unit", lambda h: stream(h, width=48, schedule="histream"), ValueError, "multiple of 32"),
    ("size_huge", lambda h: stream(h, height=16384, width=16384), RequestError, "GiB of available RAM"),
    ("schedule_name", lambda h: stream(h, schedule="fast"), ValueError, "unknown schedule 'fast'"),
    ("schedule_ntk_yes", lambda h: stream(h, schedule=bad_schedule(ntk="yes")), ValueError, "ntk must be true or false"),
    ("schedule_low_factor", lambda h: stream(h, schedule=bad_schedule(low_factor=2.5)), ValueError, "low_factor must be an integer"),
    ("schedule_unknown_field", lambda h: stream(h, schedule=bad_schedule(steps=4)), ValueError, "unknown schedule fields"),
    ("schedule_rising", lambda h: stream(h, schedule=bad_schedule(later=[["high", 500], ["high", 900]])), ValueError, "strictly decrease"),
    ("schedule_file", lambda h: stream(h, schedule="/nonexist/s.json"), ValueError, "cannot read schedule file"),
    ("chunk_size_str", lambda h: EngineConfig(chunk_size="3"), RequestTypeError, "chunk_size must be an integer"),
    ("chunk_size_zero", lambda h: EngineConfig(chunk_size=0), RequestError, "chunk_size must be >= 1"),
    # F11: a config is checked whole when it is made, and a change is a new config (replace), checked again
    ("cuda_graphs_str", lambda h: EngineConfig(cuda_graphs="no"), RequestTypeError, "cuda_graphs must be True or False, got 'no'"),
    ("compile_str", lambda h: EngineConfig(compile="no"), RequestTypeError, "compile must be True or False, got 'no'"),
    ("replace_chunk_size_zero", lambda h: EngineConfig().replace(chunk_size=0), RequestError, "chunk_size must be >= 1"),
    ("replace_kv_dtype", lambda h: EngineConfig().replace(kv_dtype="float8"), ValueError, "kv_dtype must be None (the model dtype) or 'float8_e4m3fn', got 'float8'"),
    ("edit_in_place", lambda h: setattr(EngineConfig(), "chunk_size", 0), dataclasses.FrozenInstanceError, "chunk_size"),
    ("dit_float64", lambda h: Engine(h.engine.dit.to(torch.float64)), RequestError, "the DiT is float64"),
    ("device_cuda", lambda h: resolve_device("cuda") if not torch.cuda.is_available() else resolve_device("cuda:99"),
     RequestError, "CUDA device"),
    ("device_name", lambda h: resolve_device("gpu0"), RequestError, "unknown device 'gpu0'"),
    ("model_dir_missing", lambda h: Engine.from_pretrained("/nonexist/wan", device="cpu"), CheckpointError, "does not exist"),
    ("host_batch", lambda h: type(h)(h.engine, torch.zeros(2, 4, 32)).results(HostRequest(frames=9, height=32, width=32, schedule="self_forcing")),
     RequestError, "batch of 2 prompts"),
]


@pytest.mark.parametrize("call, exc_type, fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_api_input_raises_a_clear_error(tiny_host, call, exc_type, fragment):
    with pytest.raises(exc_type) as info:
        call(tiny_host)
    assert fragment in str(info.value)
    tiny_host.engine.dit.to(torch.float32)  # the float64 row moved the shared model


def test_model_dir_that_is_a_file_and_checkpoint_that_is_a_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a file"):
        Engine.from_pretrained(f, device="cpu")
    with pytest.raises(CheckpointError, match="is a folder"):
        Engine.from_pretrained(tmp_path, checkpoint=tmp_path, device="cpu", text_encoder=False)


def test_non_finite_latents_name_the_chunk_and_step():
    steps = SCHEDULES["histream"].later
    x0 = torch.zeros(1, 16, 3, 4, 4)  # [B, 16, M, h, w]
    check_finite_latents(x0, 2, steps)
    x0[0, 5, 1, 2, 3] = float("nan")
    with pytest.raises(NonFiniteLatents, match=r"chunk 2: .* after step 4/4 \(high res"):
        check_finite_latents(x0, 2, steps)


def test_a_model_that_goes_non_finite_fails_at_its_chunk(tiny_host):
    engine = Engine(tiny_host.engine.dit)  # no VAE: the check comes before any decode
    prompt = tiny_host.default_prompt[:, :8]  # [1, 8, text_dim]
    weight = next(engine.dit.parameters())
    saved = weight.clone()
    try:
        weight.fill_(float("nan"))
        with pytest.raises(NonFiniteLatents, match="chunk 0: .* after step 4/4"):
            list(engine.stream(prompt, 9, 16, 16))
    finally:
        weight.copy_(saved)
    assert torch.isfinite(next(engine.stream(prompt, 9, 16, 16)).latents).all()  # the restored model runs


def test_a_model_that_goes_non_finite_mid_run_fails_at_that_chunk_after_delivering_the_first(tiny_host):
    """NaN only at t=0 (poison_time_zero): chunk 0 denoises finite and decodes, the recache after it writes NaN K/V,
    and chunk 1 fails by name; the stream delivered exactly one chunk."""
    from .conftest import poison_time_zero

    dit = copy.deepcopy(tiny_host.engine.dit)
    poison_time_zero(dit, [s.timestep for s in SCHEDULES["self_forcing"].later])
    engine = Engine(dit, vae=tiny_host.engine.vae)
    got = []
    with pytest.raises(NonFiniteLatents, match=r"chunk 1: the latents hold NaN or Inf after step 4/4 \(high res, t=625.0\)"):
        for chunk in engine.stream(tiny_host.default_prompt[:, :8], 21, 16, 16, schedule="self_forcing"):
            got.append(chunk)
    assert [c.index for c in got] == [0] and torch.isfinite(got[0].latents).all() and got[0].frames.shape[1] == 9


def test_schedule_dict_roundtrip_still_valid():
    for s in SCHEDULES.values():
        assert Schedule.from_dict(s.to_dict()) == s
