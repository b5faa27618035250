"""Sequence parallelism (runtime.ulysses): 2 and 3 gloo ranks on this CPU give the single-process video, each rank
holding 1/N of the cache; requests and models that differ between ranks are refused on every rank at once."""

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from conftest import rel_err
from histream_engine import Engine, EngineConfig, WanConfig, flops
from histream_engine.runtime.parallel.ulysses import TokenSplit

import parallel_ranks as ranks

# fp32 on both sides: what remains is the order of float sums (another thread count, sliced matmuls)
TOLERANCE = 1e-5


def spawn(world: int, attention: str = "torch") -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(ranks.run, args=(world, f"{out}/init", out, attention), nprocs=world, start_method="spawn")
        results = [torch.load(f"{out}/rank{r}.pt", weights_only=True) for r in range(world)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r}:\n{res['crash']}"
    return results


SLOW = os.environ.get("HISTREAM_SLOW_TESTS") == "1"


# 3 ranks on 2 cores take twice as long as 2: in the slow suite only (the 2-rank case covers uneven token counts too)
@pytest.fixture(scope="module", params=[2, pytest.param(3, marks=pytest.mark.skipif(not SLOW, reason="HISTREAM_SLOW_TESTS=1"))],
                ids=["2ranks", "3ranks"])
def sharded(request):
    return request.param, spawn(request.param)


@pytest.fixture(scope="module")
def single():
    engine = Engine(ranks.model(), EngineConfig())
    return {name: ranks.video(engine, name, *args) for name, *args in ranks.VIDEOS}


@pytest.mark.parametrize("name", [v[0] for v in ranks.VIDEOS])
def test_every_rank_streams_the_single_process_video(sharded, single, name):
    world, results = sharded
    for r, res in enumerate(results):
        err = rel_err(res[name]["latents"], single[name]["latents"])
        assert err <= TOLERANCE, f"rank {r}: {err:.2e}"
    # the ranks run the same sampling arithmetic on the same gathered flow: their latents are the same bits
    for res in results[1:]:
        assert torch.equal(res[name]["latents"], results[0][name]["latents"])


def test_a_live_switch_lands_on_every_rank_at_the_chunk_the_last_rank_asked_for(sharded):
    world, results = sharded
    reference = ranks.live(Engine(ranks.model(), EngineConfig()), switch_after=world)
    assert reference["switched"] == [world + 1]
    for r, res in enumerate(results):
        got = res["live_staggered_switch"]
        assert got["switched"] == [world + 1] and got["freed"], got
        err = rel_err(got["latents"], reference["latents"])
        assert err <= TOLERANCE, f"rank {r}: {err:.2e}"


def test_every_rank_resumes_rank_0s_state_as_one_process_recaches_at_that_boundary(sharded):
    _world, results = sharded
    # the uninterrupted stream on one process, the same prompt re-cached at the boundary after chunk 2
    reference = ranks.live(Engine(ranks.model(), EngineConfig()), switch_after=2, new_prompt=ranks.prompt())
    assert reference["switched"] == [3]
    for r, res in enumerate(results):
        got = res["resumed"]
        assert got["indices"] == list(range(6)) and got["switched"] == [3] and got["freed"], got
        err = rel_err(got["latents"], reference["latents"])
        assert err <= TOLERANCE, f"rank {r}: {err:.2e}"


def test_a_rank_that_closes_stops_every_rank_at_the_next_boundary(sharded):
    _world, results = sharded
    for res in results:
        assert res["one_rank_closes"] == {"seen": [0, 1, 2], "freed": True}


def test_a_close_from_another_thread_mid_chunk_stops_every_rank_after_that_chunk(sharded):
    _world, results = sharded
    for res in results:
        assert res["closed_mid_chunk"] == {"seen": [0, 1, 2], "freed": True}


def test_an_error_between_chunks_on_one_rank_stops_the_others_at_the_next_boundary(sharded):
    _world, results = sharded
    assert results[0]["decoder_fails"] == [0, 1, "the decoder failed"]  # rank 0 decodes; its third decode raises
    for res in results[1:]:
        assert res["decoder_fails"] == [0, 1, 2]  # the others stop at chunk 3's boundary instead of waiting there


def test_each_rank_caches_one_nth_of_the_heads(sharded, single):
    world, results = sharded
    for name, *_ in ranks.VIDEOS:
        assert all(res[name]["cache_bytes"] * world == single[name]["cache_bytes"] for res in results), name


def test_ranks_that_disagree_are_refused_on_every_rank_and_the_group_goes_on(sharded, single):
    world, results = sharded
    for r, res in enumerate(results):
        assert res["seeds_differ"]["error"] == "RanksDisagree", res["seeds_differ"]
        assert "seed=" in res["seeds_differ"]["message"] and "rank 1" in res["seeds_differ"]["message"]
        assert res["one_rank_refuses"]["error"] == "ValueError"
        assert f"rank {world - 1} refused stream requests" in res["one_rank_refuses"]["message"]
        assert "more memory than this rank has" in res["one_rank_refuses"]["message"]
        assert res["weights_differ"]["error"] == "RanksDisagree" and "weights=" in res["weights_differ"]["message"]
        assert res["heads_indivisible"]["error"] == "ValueError"
        assert f"not divisible by the world size {world}" in res["heads_indivisible"]["message"]
        # after the refusals the group still streams, and streams right
        err = rel_err(res["after_refusals"]["latents"], single["self_forcing_48x80"]["latents"])
        assert err <= TOLERANCE, f"rank {r}: {err:.2e}"


@pytest.mark.parametrize("name", [v[0] for v in ranks.VIDEOS])
def test_bytes_sent_are_what_the_cost_model_counts(sharded, name):
    world, results = sharded
    _, schedule, frames, height, width = next(v for v in ranks.VIDEOS if v[0] == name)
    model = sum(flops.schedule_exchange_bytes(ranks.model().config, schedule, frames, height, width, world, item=4))
    sent = [res[name]["bytes_sent"] for res in results]
    # the model counts the ranks' average (the first ranks own one token more where N does not divide a frame)
    assert sum(sent) / world == pytest.approx(model, rel=1e-12)


def test_token_split_covers_every_token_once():
    for tokens in (1, 5, 15, 24480, 6120):
        for world in (1, 2, 3, 4, 8):
            split = TokenSplit(tokens, world)
            assert sum(split.sizes) == tokens and max(split.sizes) - min(split.sizes) <= 1
            bounds = [split.bounds(r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == tokens
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_parallel_without_a_process_group_is_refused():
    with pytest.raises(ValueError, match="needs an initialised process group"):
        Engine(ranks.model(), EngineConfig(parallel="ulysses"))


def test_parallel_with_exported_graphs_is_refused():
    with pytest.raises(ValueError, match="exported whole-model graphs"):
        EngineConfig(dit="onnxruntime", engine_dir="x", parallel="ulysses")
    with pytest.raises(ValueError, match="parallel must be one of"):
        EngineConfig(parallel="ring")
    with pytest.raises(ValueError, match="set parallel='ulysses' with it"):
        EngineConfig(group=object())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL collectives inside captured CUDA graphs)")
def test_cuda_graphs_capture_the_collectives_and_replay_the_eager_stream():
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(ranks.run_cuda_graphs, args=(2, f"{out}/init", out), nprocs=2, start_method="spawn")
        results = [torch.load(f"{out}/rank{r}.pt", weights_only=True) for r in range(2)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r}:\n{res['crash']}"
        assert "replayed" in res[True]["modes"], res[True]["modes"]
        err = rel_err(res[True]["latents"], res[False]["latents"])
        assert err <= TOLERANCE, f"rank {r}: {err:.2e}"


def test_the_cost_model_counts_the_design_figures():
    cfg = WanConfig.from_name("wan2.1-1.3b")
    L = 3 * 8160  # one 1080p chunk's queries
    # DESIGN.md: per rank and layer, four all-to-alls of L/N x dim move 4 * L * dim * 2 B * (N - 1) / N^2; then the flow
    for n in (2, 4):
        layers = 4 * L * cfg.dim * 2 * (n - 1) / n**2 * cfg.num_layers
        flow = 3 * -(-8160 // n) * 64 * 2 * (n - 1)  # each rank's [3, S/N, 64] head output to every other rank
        assert flops.exchange_bytes(cfg, 8160, 3, n, item=2) == pytest.approx(layers + flow, rel=1e-12)
    one, four = (flops.predict_parallel(cfg, "histream", 81, 1088, 1920, n) for n in (1, 4))
    assert one.comm_s_per_frame == 0 and four.compute_s_per_frame == pytest.approx(one.compute_s_per_frame / 4, rel=1e-12)
    assert four.s_per_frame == four.compute_s_per_frame + four.comm_s_per_frame
    assert 0.01 < four.comm_s_per_frame / four.s_per_frame < 0.1  # Ulysses moves activations: a few percent of a forward
    with pytest.raises(ValueError, match="not divisible"):
        flops.predict_parallel(cfg, "histream", 81, 1088, 1920, 8)  # 12 heads
