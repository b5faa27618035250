"""Graph replay of steady-state chunks runs the eager chunk function on static inputs refreshed in place.

On a CPU there are no CUDA graphs, so ``ReexecGraph`` stands in for one: at replay it reruns the function
it was given at capture, which can only see what the capture saw (the static noise and view objects).
Any chunk-dependent value that reached the chunk some other way would be stale at replay and show as a
mismatch with the eager run. With a GPU the same comparisons run on real ``torch.cuda.CUDAGraph``s.
"""

import pytest
import torch

from conftest import rel_err, random_dit, skip_where_the_interpreter_cannot_run_the_cores
from histream_engine import Engine, EngineConfig, SCHEDULES
from histream_engine.attention.rope import inv_freqs
from histream_engine.runtime.denoise.chunk_graphs import CAPTURED, EAGER, REPLAYED, ChunkGraphs
from histream_engine.runtime.cache.kv_cache import RingKVCache
from histream_engine.runtime.cache.window import WindowPlan


class ReexecGraph:
    def capture(self, fn):
        self.fn = fn
        self.out = fn()
        return self.out

    def replay(self):
        self.out.copy_(self.fn())


class ReexecGraphEngine(Engine):
    def graph_factory(self):
        return ReexecGraph


def run(engine, schedule, frames, height=64, width=96, seed=3):
    torch.manual_seed(11)
    ctx = torch.randn(1, 5, engine.dit.config.text_dim, device=engine.dit.device)
    return list(engine.stream(ctx, frames, height, width, schedule=schedule, seed=seed))


# 8 chunks of 3 latent frames: the 6-slot ring (anchor + 5) wraps, absolute positions keep growing
FRAMES = 4 * 24 - 3


@pytest.mark.parametrize(
    "schedule",
    [SCHEDULES["histream"], SCHEDULES["histream_plus"], SCHEDULES["histream_plus"].replace(name="window_pos", positions="window")],
    ids=["histream", "histream_plus", "window_positions"],
)
def test_replayed_chunks_equal_eager_chunks(schedule, device):
    dit = random_dit("tiny", seed=2, device=device)
    eager = run(Engine(dit), schedule, FRAMES)
    graphed = run(ReexecGraphEngine(dit), schedule, FRAMES)
    assert [c.run_mode for c in eager] == [EAGER] * 8
    # chunk 0 and 1 differ in window size; chunk 1 is the first steady one (eager), chunk 2 captures
    assert [c.run_mode for c in graphed] == [EAGER, EAGER, CAPTURED] + [REPLAYED] * 5
    for e, g in zip(eager, graphed):
        assert torch.equal(e.latents, g.latents), e.index
        assert (e.tokens_attended, e.forwards, e.recache) == (g.tokens_attended, g.forwards, g.recache)
    # replayed outputs are the caller's: the next replay must not overwrite them
    assert len({g.latents.data_ptr() for g in graphed}) == len(graphed)


def test_full_cache_schedule_never_replays(device):
    dit = random_dit("tiny", seed=2, device=device)
    chunks = run(ReexecGraphEngine(dit), "self_forcing", 4 * 12 - 3)
    assert [c.run_mode for c in chunks] == [EAGER] * 4


def test_replay_through_triton_kernels_equals_torch_eager(device):
    """The kernels read other view tensors (slot and query positions, the RoPE table) than the torch path."""
    skip_where_the_interpreter_cannot_run_the_cores()
    dit = random_dit("tiny", seed=2, device=device)
    frames = 4 * 15 - 3  # 5 chunks: eager, eager, captured, replayed, replayed
    eager = run(Engine(dit), "histream_plus", frames, height=32, width=64)
    graphed = run(ReexecGraphEngine(dit, EngineConfig(attention="triton")), "histream_plus", frames, height=32, width=64)
    assert [c.run_mode for c in graphed] == [EAGER, EAGER, CAPTURED, REPLAYED, REPLAYED]
    for e, g in zip(eager, graphed):
        assert rel_err(g.latents, e.latents) < 1e-6, e.index  # eager triton is ~1e-7 from torch here


def test_view_load_refreshes_every_built_tensor(device):
    plan = WindowPlan(chunk_size=2, anchor_frames=1, history_frames=1)
    cache = RingKVCache(plan, 1, 1, 6, 1, 32, torch.float32, device)
    freqs = inv_freqs(32, 10000.0, (1.0, 1.5, 1.0))
    static = cache.view(2, (2, 3), freqs, rope_positions=40)
    names = ("write_rows", "q_rope", "slot_rope", "slot_position_index", "query_position_index", "rope_table")
    built = {name: getattr(static, name) for name in names}
    for c in (3, 4, 7):
        fresh = cache.view(c, (2, 3), freqs, rope_positions=40)
        static.load(fresh)
        for name in names:
            old, new, want = built[name], getattr(static, name), getattr(fresh, name)
            pairs = zip(*(t if isinstance(t, tuple) else (t,) for t in (old, new, want)))
            for o, n, w in pairs:
                assert o is n and torch.equal(n, w), (c, name)  # the captured tensors themselves, refreshed
    with pytest.raises(ValueError, match="cannot load"):
        static.load(cache.view(0, (2, 3), freqs, rope_positions=40))  # chunk 0 sees 2 frames, not 4
    with pytest.raises(ValueError, match="RoPE frequencies"):
        static.load(cache.view(3, (2, 3), inv_freqs(32), rope_positions=40))


def test_graphs_run_the_body_once_per_chunk_and_capture_once(device):
    calls = []

    class CountingGraph:
        def capture(self, fn):
            calls.append("capture")
            self.fn, self.out = fn, torch.zeros(1, device=device)
            return self.out

        def replay(self):
            calls.append("replay")
            self.out.copy_(self.fn())

    def body(steps, noises, views):
        calls.append("body")
        return noises[0] * 2

    graphs = ChunkGraphs(CountingGraph)
    plan = WindowPlan(chunk_size=1, anchor_frames=0, history_frames=1)
    cache = RingKVCache(plan, 1, 1, 1, 1, 32, torch.float32, device)
    outs = []
    for c in range(1, 5):
        noise = torch.full((1,), float(c), device=device)
        x0, mode = graphs.run(("s",), [noise], {"high": cache.view(c, (1, 1), inv_freqs(32))}, body)
        outs.append((x0.item(), mode))
    assert outs == [(2.0, EAGER), (4.0, CAPTURED), (6.0, REPLAYED), (8.0, REPLAYED)]
    assert calls == ["body", "capture", "replay", "body", "replay", "body", "replay", "body"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cuda_graphs_refused_off_cuda(device):
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device"):
        Engine(random_dit("tiny", device=device), EngineConfig(cuda_graphs=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "attention, dtype", [("torch", torch.float32), ("triton", torch.float32), ("triton", torch.bfloat16),
                         ("cudnn", torch.bfloat16), ("cuda", torch.bfloat16), ("auto", torch.bfloat16)])
def test_cuda_graph_replay_equals_eager_on_gpu(attention, dtype, device):
    """Replays read the pre-pass scratch and the auto choices made by the eager chunks: same kernels, same inputs."""
    dit = random_dit("tiny", seed=2, dtype=dtype, device=device)
    eager = run(Engine(dit, EngineConfig(attention=attention)), "histream_plus", FRAMES)
    graphed = run(Engine(dit, EngineConfig(attention=attention, cuda_graphs=True)), "histream_plus", FRAMES)
    assert [c.run_mode for c in graphed] == [EAGER, EAGER, CAPTURED] + [REPLAYED] * 5
    for e, g in zip(eager, graphed):
        assert rel_err(g.latents, e.latents) < 1e-6, e.index
