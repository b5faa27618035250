"""Unbounded streams and prompt switches (runtime.stream, runtime.recache), against the uncached reference forward."""

import gc
import os
import threading

import pytest
import torch

from conftest import rel_err, random_dit
from uncached_reference import reference_chunk
from histream_engine import SCHEDULES, Engine, WanConfig
from histream_engine.runtime.denoise.chunk import ChunkDenoiser
from histream_engine.runtime.stream import StreamClosedError

M = 3


def live(name: str):
    return SCHEDULES[name].replace(positions="window")


@pytest.fixture(scope="module")
def ntk_dit(device):
    # A training grid smaller than the test grid, so NTK scaling is active at both resolutions.
    return random_dit(WanConfig.from_name("tiny").replace(train_grid=(2, 3)), seed=7, device=device)


def draw_noise(gen, sched, chunk, B, hw):
    return [torch.randn((B, 16, M) + hw[s.resolution], generator=gen, device=gen.device) for s in sched.steps(chunk)]


def reference_chunk_after_switch(dit, ctx, sched, context_x0, chunk, noises, hw):
    """Chunk ``chunk`` with the uncached whole-sequence forward over [the frames it attends, at t=0] + [its noisy
    latents], ``block_causal=M``, under the prompt ``ctx``: every step recomputes the attended frames from scratch."""
    train = dit.config.train_grid
    ntk = {k: (1.0, max(1.0, h / 2 / train[0]), max(1.0, w / 2 / train[1])) for k, (h, w) in hw.items()}
    return reference_chunk(dit, ctx, sched, context_x0, chunk, noises, M, ntk=ntk)


@pytest.mark.parametrize("name", ["histream", "histream_plus"])
def test_recache_after_a_switch_equals_the_uncached_reference(ntk_dit, name):
    sched = live(name)
    H, W, k = 96, 160, 2  # high latent 12x20 -> 6x10 tokens; low 3x5; switch before chunk k + 1 = 3
    hw = {"high": (H // 8, W // 8), "low": (H // 16, W // 16)}
    old, new = torch.randn(1, 6, 32, device=ntk_dit.device), torch.randn(1, 4, 32, device=ntk_dit.device)
    stream = Engine(ntk_dit).stream(old, None, H, W, schedule=sched, seed=3)
    got = [next(stream) for _ in range(k + 1)]
    stream.set_prompt(new, recache=True)
    after = next(stream)
    stream.close()
    assert after.prompt_switch is not None and after.prompt_switch.recache
    assert after.prompt_switch.forwards == {"low": 1, "high": 1}
    assert got[-1].prompt_switch is None

    gen = torch.Generator(device=ntk_dit.device).manual_seed(3)
    for c in range(k + 1):
        draw_noise(gen, sched, c, 1, hw)
    noises = draw_noise(gen, sched, k + 1, 1, hw)
    history = torch.cat([c.latents for c in got], dim=2)  # [1, 16, 9, h, w]
    plan = sched.window_plan(M, None)
    context_frames = plan.visible_frames(k + 1)[:-M]
    assert context_frames == [0, 7, 8]  # the anchor, then the M-1 frames before the chunk
    want = reference_chunk_after_switch(ntk_dit, new, sched, history[:, :, context_frames], k + 1, noises, hw)
    assert rel_err(after.latents, want) <= 1e-5
    # Without the re-cache the chunk differs: the cached frames still carry the old prompt.
    plain = Engine(ntk_dit).stream(old, None, H, W, schedule=sched, seed=3)
    for _ in range(k + 1):
        next(plain)
    plain.set_prompt(new, recache=False)
    assert rel_err(next(plain).latents, want) > 1e-3
    plain.close()


def ring_state(stream):
    return {name: (cache.k.clone(), cache.v.clone()) for name, cache in stream.caches.items()}


@pytest.mark.parametrize("recache", [False, True])
def test_a_switch_without_recache_changes_only_the_cross_attention(device_dit, recache, monkeypatch):
    ctx, new = torch.randn(1, 5, 32, device=device_dit.device), torch.randn(1, 5, 32, device=device_dit.device)
    sched = live("histream_plus")
    a = Engine(device_dit).stream(ctx, None, 32, 32, schedule=sched, seed=1)
    engine = Engine(device_dit)
    b = engine.stream(ctx, None, 32, 32, schedule=sched, seed=1)
    for _ in range(3):
        assert torch.equal(next(a).latents, next(b).latents)
    before = ring_state(b)
    seen = []
    denoise = ChunkDenoiser.__call__
    monkeypatch.setattr(ChunkDenoiser, "__call__", lambda *args: seen.append(ring_state(b)) or denoise(*args))  # the ring as the chunk finds it
    b.set_prompt(new, recache=recache)
    b_next, a_next = next(b), next(a)
    assert b_next.prompt_switch.recache == recache
    assert b_next.prompt_switch.forwards == ({"low": 1, "high": 1} if recache else {"low": 0, "high": 0})
    assert rel_err(b_next.latents, a_next.latents) > 1e-3  # the new text reached the chunk
    untouched = all(torch.equal(x, y) for name in before for x, y in zip(before[name], seen[0][name]))
    assert untouched != recache  # only a re-cache rewrites the ring; without one only the text K/V changed
    a.close()
    b.close()


def test_unbounded_streams_need_a_window_with_window_positions(device_dit):
    engine = Engine(device_dit)
    ctx = torch.randn(1, 3, 32, device=device_dit.device)
    with pytest.raises(ValueError, match="positions='window'"):
        engine.stream(ctx, None, 32, 32, schedule="histream")
    with pytest.raises(ValueError, match="sliding-window schedule"):
        engine.stream(ctx, None, 32, 32, schedule="self_forcing")
    with pytest.raises(ValueError, match="num_frames"):
        engine.generate(ctx, None, 32, 32, schedule=live("histream"))


def test_bad_switches_are_refused(device_dit):
    stream = Engine(device_dit).stream(torch.randn(1, 3, 32, device=device_dit.device), None, 32, 32, schedule=live("histream"))
    next(stream)
    # a switch passes the very check a stream's first prompt passes (request_checks.check_prompt_embeds)
    with pytest.raises(ValueError, match="text_dim=32"):
        stream.set_prompt(torch.randn(1, 3, 16, device=device_dit.device))
    with pytest.raises(ValueError, match="real floating tensor.*float8_e4m3fn"):
        stream.set_prompt(torch.randn(1, 3, 32, device=device_dit.device).to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="batch of 2; this stream streams 1"):
        stream.set_prompt(torch.randn(2, 7, 32, device=device_dit.device))
    with pytest.raises(ValueError, match=">= 1 token"):
        stream.set_prompt(torch.randn(0, 32, device=device_dit.device))
    with pytest.raises(ValueError, match="meta device"):
        stream.set_prompt(torch.empty(3, 32, device="meta"))  # fixed-device: a meta tensor is what is refused
    with pytest.raises(ValueError, match="dense tensor, got layout sparse_coo"):
        stream.set_prompt(torch.randn(3, 32, device=device_dit.device).to_sparse())
    with pytest.raises(ValueError, match="NaN"):
        stream.set_prompt(torch.full((3, 32), float("nan"), device=device_dit.device))
    with pytest.raises(TypeError, match="torch.Tensor"):
        stream.set_prompt([[0.0] * 32])
    stream.close()
    assert stream.closed and not stream.holds_caches
    with pytest.raises(StreamClosedError, match="closed"):
        stream.set_prompt(torch.randn(3, 32, device=device_dit.device))
    assert list(stream) == []
    full = Engine(device_dit).stream(torch.randn(1, 3, 32, device=device_dit.device), 45, 32, 32, schedule="self_forcing")
    with pytest.raises(ValueError, match="full-history"):
        full.set_prompt(torch.randn(3, 32, device=device_dit.device), recache=True)
    full.set_prompt(torch.randn(3, 32, device=device_dit.device), recache=False)  # only the text K/V: fine on any stream
    assert next(full).prompt_switch is not None
    full.close()


def test_a_switch_from_another_thread_lands_at_a_chunk_boundary(device_dit):
    stream = Engine(device_dit).stream(torch.randn(1, 3, 32, device=device_dit.device), None, 32, 32, schedule=live("histream_plus"))
    switched = []
    for chunk in stream:
        if chunk.prompt_switch is not None:
            switched.append(chunk.index)
        if chunk.index == 2:
            t = threading.Thread(target=stream.set_prompt, args=(torch.randn(1, 7, 32, device=device_dit.device),))
            t.start()
            t.join()
        if chunk.index == 5:
            break
    stream.close()
    assert switched == [3]


SOAK_CHUNKS = 1000 if os.environ.get("HISTREAM_SLOW_TESTS") == "1" else 150  # 1,000 take ~40 s here: the slow flag


def test_an_unbounded_stream_runs_in_constant_memory(device_dit):
    stream = Engine(device_dit).stream(torch.randn(1, 3, 32, device=device_dit.device), None, 32, 32, schedule=live("two_step"))
    counts, sizes, last = {}, set(), SOAK_CHUNKS - 1
    for chunk in stream:
        sizes.add((chunk.cache_bytes, chunk.latent_bytes))
        if chunk.index in (20, last):
            gc.collect()
            counts[chunk.index] = sum(isinstance(o, torch.Tensor) for o in gc.get_objects())
        if chunk.index == SOAK_CHUNKS // 2:
            stream.set_prompt(torch.randn(1, 4, 32, device=device_dit.device))
        if chunk.index == last:
            break
    stream.close()
    assert len(sizes) == 1 and stream.caches is None
    assert counts[last] <= counts[20]  # no tensor is kept per chunk, switch or not
