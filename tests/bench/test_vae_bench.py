import json

import pytest
import torch

from histream_engine import flops
from histream_engine.bench.vae import main


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: two OpenMP threads on a shared 2-core machine mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_decoders_alone_record_and_table(tmp_path):
    out = tmp_path / "v.json"
    assert main(["--resolutions", "32x32", "48x32", "--decoders", "tae", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["decoder"], r["width"], r["height"]) for r in rows] == [("taehv", 32, 32), ("taehv", 48, 32)]
    assert rows[1]["flops_per_frame"] == flops.taehv_flops_per_frame(32, 48) and all(r["seconds_per_frame"] > 0 for r in rows)
    assert "| taehv | 48x32 |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit) as e:
        main(["--resolutions", "30x32"])
    assert e.value.code == 2


@pytest.fixture
def small_taew(tmp_path):
    """A TAEHV file in taew2_1's layout at a sixteenth of its width (the loader reads the widths from the shapes)."""
    from histream_engine import TAEHV, TAEHVConfig, save_taehv

    torch.manual_seed(5)
    return save_taehv(TAEHV(TAEHVConfig(channels=(16, 8, 8, 8))), tmp_path / "taew2_1.pth")


def test_tae_weights_from_a_file_are_timed_and_recorded(tmp_path, small_taew):
    out = tmp_path / "v.json"
    assert main(["--resolutions", "32x32", "--decoders", "tae", "--tae", str(small_taew), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["tae_weights"] == str(small_taew) and [r["decoder"] for r in record["rows"]] == ["taehv"]
    md = out.with_suffix(".md").read_text()
    assert f"Commit {record['environment']['git_commit']}, {record['date']}; TAEHV: {small_taew}." in md


@pytest.mark.parametrize("argv, fragment", [
    (["--tae", "{tmp}/missing.pth"], "--tae: TAEHV weights {tmp}/missing.pth do not exist"),
    (["--tae", "{tmp}/wan.pth"], "is not a TAEHV checkpoint"),
    (["--decoders", "wan", "--tae", "{taew}"], "--tae names TAEHV weights, but --decoders wan leaves TAEHV out"),
    (["--out", "{tmp}"], "is a directory"),
])
def test_bad_tae_file_or_out_exits_2_before_any_decode(tmp_path, small_taew, capsys, monkeypatch, argv, fragment):
    from histream_engine.bench import vae

    torch.save({"decoder.conv1.weight": torch.zeros(1)}, tmp_path / "wan.pth")
    monkeypatch.setattr(vae, "time_decoder", lambda *a: pytest.fail("timed before the arguments were checked"))
    with pytest.raises(SystemExit) as e:
        main(["--resolutions", "32x32"] + [a.format(tmp=tmp_path, taew=small_taew) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and fragment.format(tmp=tmp_path) in err, err


def test_the_bench_builds_taehv_through_the_loader(monkeypatch, small_taew):
    """One construction path (taehv_from_state, which makes the weights channels-last on a GPU), random or loaded."""
    from histream_engine import TAEHV, TAEHVConfig, load_taehv
    from histream_engine.bench import vae
    from histream_engine.taehv_checkpoint import taehv_from_state

    calls = []
    monkeypatch.setattr(vae, "taehv_from_state", lambda *a: calls.append(a[1]) or taehv_from_state(*a))
    random = vae.build_decoder("tae", torch.float32, torch.device("cpu"))
    assert calls == [vae.Path(vae.RANDOM_TAE)] and isinstance(random, TAEHV) and random.config == TAEHVConfig()
    assert not random.training and not any(p.requires_grad for p in random.parameters())
    loaded, want = vae.build_decoder("tae", torch.float32, torch.device("cpu"), small_taew), load_taehv(small_taew)
    assert loaded.config == want.config and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), want.state_dict().values()))
    wan = vae.build_decoder("wan", torch.bfloat16, torch.device("cpu"), wan_dim=8)
    assert wan.name == "wan" and wan.dtype == torch.bfloat16 and not wan.training
