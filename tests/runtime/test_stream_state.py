"""Stream states (runtime.stream_state): a stream taken at a chunk boundary, saved, loaded and resumed.

Resuming with new prompt embeddings equals the uninterrupted stream with ``set_prompt(new, recache=True)`` at that
boundary; a state with its rings resumes the same prompt bit for bit; the state at a finished video's end extends it.
"""

import json

import pytest
import torch

from conftest import random_dit, rel_err
from histream_engine import SCHEDULES, Engine, EngineConfig
from histream_engine.runtime.stream_state import METADATA_KEY, StreamStateError, load_stream_state, stream_state_from_bytes

H, W = 64, 96  # high latent 8x12, low 4x6


def live(name: str):
    return SCHEDULES[name].replace(positions="window")


@pytest.fixture(scope="module")
def engine(device):
    return Engine(random_dit("tiny", seed=4, device=device))


def prompts(device):
    g = torch.Generator(device=device).manual_seed(0)
    return torch.randn(1, 5, 32, generator=g, device=device), torch.randn(1, 4, 32, generator=g, device=device)


@pytest.mark.parametrize("schedule", [live("histream"), live("histream_plus"), SCHEDULES["no_drc"]], ids=["histream", "plus", "no_drc"])
def test_resuming_with_a_new_prompt_equals_a_recache_switch_at_that_boundary(engine, schedule, tmp_path):
    old, new = prompts(engine.dit.device)
    num = None if schedule.positions == "window" else 57  # 5 chunks: a bounded stream with absolute positions
    a = engine.stream(old, num, H, W, schedule=schedule, seed=3)
    before = [next(a) for _ in range(2)]
    state = a.state()
    assert state.next_chunk == 2 and state.context_frames == [0, 4, 5] and not state.has_rings
    a.set_prompt(new, recache=True)
    want = [next(a) for _ in range(3)]
    a.close()
    loaded = load_stream_state(state.save(tmp_path / "s.safetensors"))  # through the file: nothing lost on the way
    b = engine.resume(loaded, new, chunks=3)
    got = list(b)
    assert [c.index for c in got] == [2, 3, 4]
    assert got[0].prompt_switch.recache and got[0].prompt_switch.forwards == want[0].prompt_switch.forwards
    for w, g in zip(want, got):
        assert rel_err(g.latents, w.latents) <= 1e-5
    assert before[1].index == 1


@pytest.mark.parametrize("schedule", [live("histream_plus"), SCHEDULES["self_forcing"]], ids=["plus", "self_forcing"])
def test_a_state_with_its_rings_resumes_the_same_prompt_bit_for_bit(engine, schedule, tmp_path):
    old, _ = prompts(engine.dit.device)
    num = None if schedule.positions == "window" else 45  # self_forcing: 4 chunks, full history in the ring
    a = engine.stream(old, num, H, W, schedule=schedule, seed=5)
    [next(a) for _ in range(2)]
    state = a.state(include_cache=True)
    want = [next(a) for _ in range(2)]
    a.close()
    assert state.has_rings and state.nbytes()["rings"] > 0
    loaded = load_stream_state(state.save(tmp_path / "rings.safetensors"))
    got = list(engine.resume(loaded, chunks=2))
    assert got[0].prompt_switch is None  # the rings went back as they were: no re-cache
    assert all(torch.equal(g.latents, w.latents) for g, w in zip(got, want))


def test_the_state_at_a_videos_end_extends_it_as_a_same_prompt_recache_would(engine):
    old, new = prompts(engine.dit.device)
    sched = SCHEDULES["histream"]  # absolute positions: the 3-chunk video is the start of the 5-chunk one
    short = engine.stream(old, 33, H, W, schedule=sched, seed=2)
    first = list(short)
    end = short.state()  # after the last chunk: the stream has ended
    assert end.next_chunk == 3 and not short.holds_caches
    with pytest.raises(StreamStateError, match="end of its video.*chunks=N"):
        engine.resume(end)
    with pytest.raises(StreamStateError, match="rings were freed"):
        short.state(include_cache=True)
    long = engine.stream(old, 57, H, W, schedule=sched, seed=2)
    same = [next(long) for _ in range(3)]
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(first, same))
    long.set_prompt(new, recache=True)
    want = list(long)
    got = list(engine.resume(end, new, chunks=2))
    assert [c.index for c in got] == [3, 4]
    assert all(rel_err(g.latents, w.latents) <= 1e-5 for g, w in zip(got, want))


def test_a_state_taken_before_the_first_chunk_resumes_as_the_stream_would_start(engine):
    old, _ = prompts(engine.dit.device)
    a = engine.stream(old, 33, H, W, schedule="histream", seed=7)
    state = a.state()
    assert state.next_chunk == 0 and state.context_frames == [] and state.latents.shape[2] == 0
    want = list(a)
    got = list(engine.resume(state))
    assert [c.index for c in got] == [0, 1, 2]
    assert all(torch.equal(g.latents, w.latents) for g, w in zip(got, want))


def test_states_that_cannot_resume_here_are_refused_with_the_reason(engine, tmp_path):
    old, _ = prompts(engine.dit.device)
    a = engine.stream(old, None, H, W, schedule=live("histream"), seed=1)
    next(a)
    state = a.state()
    a.close()
    other = Engine(random_dit("tiny", seed=9, device=engine.dit.device))
    with pytest.raises(StreamStateError, match="another model.*weights"):
        other.resume(state)
    with pytest.raises(StreamStateError, match="chunk_size=3"):
        Engine(engine.dit, EngineConfig(chunk_size=2)).resume(state)
    with pytest.raises(StreamStateError, match="batch of 2; the state streams 1"):
        engine.resume(state, torch.randn(2, 4, 32, device=engine.dit.device))
    with pytest.raises(ValueError, match="chunks must be a positive integer"):
        engine.resume(state, chunks=0)
    with pytest.raises(TypeError, match="takes a StreamState"):
        engine.resume({"next_chunk": 1})
    full = engine.stream(old, 45, H, W, schedule="self_forcing", seed=1)
    next(full)
    with pytest.raises(StreamStateError, match="full history.*include_cache=True"):
        full.state()
    full.close()
    (tmp_path / "junk.safetensors").write_bytes(b"not a state")
    with pytest.raises(StreamStateError, match="not a stream state"):
        load_stream_state(tmp_path / "junk.safetensors")
    with pytest.raises(StreamStateError, match="does not exist"):
        load_stream_state(tmp_path / "absent.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))  # fixed-device: a file's tensor, saved from the host
    with pytest.raises(StreamStateError, match="not a stream state"):
        load_stream_state(tmp_path / "plain.safetensors")


def test_a_states_bytes_are_its_file_and_resume_the_same(engine, tmp_path):
    """The bytes form (a server's checkpoint, sent between processes) is the file, byte for byte, and reads back whole."""
    old, _ = prompts(engine.dit.device)
    a = engine.stream(old, None, H, W, schedule=live("histream"), seed=2)
    next(a)
    state = a.state()
    want = [next(a) for _ in range(2)]
    a.close()
    data = state.to_bytes()
    assert data == state.save(tmp_path / "s.safetensors").read_bytes()
    got = list(engine.resume(stream_state_from_bytes(data), chunks=2))
    assert [c.index for c in got] == [1, 2] and all(rel_err(g.latents, w.latents) <= 1e-5 for g, w in zip(got, want))
    with pytest.raises(StreamStateError, match="the checkpoint is not a stream state"):
        stream_state_from_bytes(b"not a state")
    from safetensors.torch import save

    tensors, metadata = state._parts()
    meta = json.loads(metadata[METADATA_KEY])
    with pytest.raises(StreamStateError, match="damaged stream state"):
        stream_state_from_bytes(save(tensors, metadata={METADATA_KEY: json.dumps({**meta, "next_chunk": "one"})}))


def test_a_resumed_live_stream_runs_until_closed(engine):
    old, new = prompts(engine.dit.device)
    a = engine.stream(old, None, H, W, schedule=live("two_step"), seed=1)
    [next(a) for _ in range(2)]
    state = a.state()
    a.close()
    b = engine.resume(state, new)
    assert [next(b).index for _ in range(4)] == [2, 3, 4, 5]
    b.close()
    assert not b.holds_caches


@pytest.mark.parametrize("schedule", [live("histream_plus"), SCHEDULES["self_forcing"]], ids=["plus", "self_forcing"])
def test_the_size_accounting_equals_a_real_states_bytes(engine, schedule):
    """``state_nbytes`` (what docs/python-api.md quotes for the 1.3B model) counts what a steady-state state holds."""
    from histream_engine.runtime.stream_state import state_nbytes

    old, _ = prompts(engine.dit.device)
    a = engine.stream(old, None if schedule.positions == "window" else 81, H, W, schedule=schedule, seed=1)
    [next(a) for _ in range(4)]  # the window is full from chunk 2 on
    state = a.state(include_cache=True)
    a.close()
    counted = state_nbytes(engine.dit.config, engine.dit.dtype, H, W, schedule, prompt_rows=old.shape[1], generator_device="cpu")
    assert counted["with_rings"] == state.nbytes()["total"]
    if schedule.window == "anchor":
        assert counted["without_rings"] == state.nbytes()["total"] - state.nbytes()["rings"]
