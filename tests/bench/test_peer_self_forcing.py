"""``--peer-self-forcing`` against a stand-in checkout (``peer_stand_in/``): CI has no checkout of the peer."""

import json
from pathlib import Path

import pytest
import torch

from conftest import rel_err, random_dit
from histream_engine import Engine
from histream_engine.bench.peer_self_forcing import PeerError, PeerSelfForcing, engine_noises, unload_peer
from histream_engine.bench.suite import main

STAND_IN = Path(__file__).parent / "peer_stand_in"


@pytest.fixture(autouse=True)
def forget_the_peer():
    yield
    unload_peer()


def test_the_peer_replays_our_self_forcing_video_from_our_noise():
    dit = random_dit("tiny", seed=5)
    torch.manual_seed(6)
    prompt = torch.randn(1, dit.config.text_len, dit.config.text_dim)
    engine = Engine(dit)
    frames, h, w = 21, 32, 48  # 2 chunks, 2x3 token grid
    peer = PeerSelfForcing(STAND_IN, dit, prompt, frames, h, w)
    assert peer.attention == "scaled_dot_product_attention"
    assert (peer.pipe.num_transformer_blocks, peer.pipe.frame_seq_length) == (dit.config.num_layers, 6)
    ours = engine.generate(prompt, frames, h, w, schedule="self_forcing", seed=0)
    theirs = peer.run(engine_noises(engine, 1, frames, h, w, seed=0))
    assert theirs.latents.shape == ours.latents.shape and theirs.seconds > 0
    assert rel_err(ours.latents, theirs.latents) < 1e-4
    other = peer.run(engine_noises(engine, 1, frames, h, w, seed=1))
    assert rel_err(other.latents, theirs.latents) > 0.1  # the noise fed in is what the peer used


def test_the_peer_must_draw_exactly_our_noise():
    dit = random_dit("tiny", seed=5)
    prompt = torch.randn(1, dit.config.text_len, dit.config.text_dim)
    peer = PeerSelfForcing(STAND_IN, dit, prompt, 21, 32, 48)
    noises = engine_noises(Engine(dit), 1, 21, 32, 48, seed=0)
    noises[1].append(noises[1][-1])
    with pytest.raises(PeerError, match="fewer noise tensors"):
        peer.run(noises)


def test_bench_times_the_peer_interleaved_and_records_the_ratio(tmp_path, capsys):
    out = tmp_path / "peer.json"
    assert main(["--preset", "cpu-small", "--schedules", "self_forcing", "histream", "--frames", "21", "--height", "64",
                 "--width", "64", "--repeats", "2", "--no-baseline", "--no-plot", "--peer-self-forcing", str(STAND_IN),
                 "--out", str(out)]) == 0
    peer = json.loads(out.read_text())["peer_self_forcing"]
    assert peer["path"] == str(STAND_IN) and peer["attention"] == "scaled_dot_product_attention"
    assert len(peer["seconds"]) == 2 and all(len(s) == 2 for s in peer["ours_seconds"].values())
    assert set(peer["speedup_vs_peer"]) == {"self_forcing", "histream"}
    for name, ratio in peer["speedup_vs_peer"].items():
        assert ratio == pytest.approx(peer["seconds_per_frame"] / peer["ours_seconds_per_frame"][name])
    assert peer["self_forcing_rel_err_vs_peer"] < 1e-4
    assert "Self-Forcing's own pipeline" in capsys.readouterr().out


def test_a_path_that_is_not_a_checkout_exits_2_before_any_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--preset", "cpu-small", "--peer-self-forcing", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "is not a Self-Forcing checkout" in err and err.count("\n") == 1
