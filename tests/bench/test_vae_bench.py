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
