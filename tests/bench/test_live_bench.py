"""`histream bench --live` (bench/live.py): the soak's record on a short stream of the tiny model."""

import json

from histream_engine.bench.live import main, tenths


def test_a_short_soak_records_latency_by_tenth_switches_and_memory(tmp_path, capsys):
    out = tmp_path / "live.json"
    assert main(["--live", "--preset", "cpu-small", "--height", "64", "--width", "64", "--chunks", "41", "--switch-every", "10",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    cs = record["chunk_seconds"]
    assert record["chunks"] == 41 and len(cs["tenth_medians"]) == 10 and all(t > 0 for t in cs["tenth_medians"])
    assert cs["drift"] == cs["last_tenth_median"] / cs["first_tenth_median"] - 1
    switches = record["switches"]
    assert switches["count"] == 4 and switches["recache"] and switches["forwards"] == {"low": 1, "high": 1}
    assert record["cache_bytes"] > 0 and record["latent_bytes"] > 0 and record["rss_bytes"]["end"] > 0
    assert "median ms of each tenth" in capsys.readouterr().out


def test_tenths_leave_out_the_warm_up_chunk():
    assert tenths([100.0] + [1.0] * 10 + [3.0] * 10) == [1.0] * 5 + [3.0] * 5
