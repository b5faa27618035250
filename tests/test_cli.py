import subprocess
import sys

from histream_engine.cli import main


def test_demo_prints_one_row_per_chunk(capsys):
    assert main(["demo", "--frames", "33", "--height", "64", "--width", "96"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:3] == ["chunk", "low", "high"])
    rows = [line.split() for line in out[header + 1 : header + 4]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert [(int(r[1]), int(r[2]), int(r[3])) for r in rows] == [(2, 2, 2)] * 3  # histream: 2 low, 2 high, 2 recache
    assert [int(r[4]) for r in rows] == [9, 12, 12]
    assert len({r[6] for r in rows}) == 1  # constant cache size
    assert all(float(r[7]) > 0 for r in rows)
    assert "for 33 frames" in out[-1]


def test_demo_bad_frames_exits_nonzero_with_message(capsys):
    assert main(["demo", "--frames", "10"]) == 2
    assert "4k+1" in capsys.readouterr().err


def test_console_script_runs_as_module():
    proc = subprocess.run(
        [sys.executable, "-m", "histream_engine.cli", "demo", "--frames", "9", "--height", "32", "--width", "32", "--schedule", "self_forcing"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ms/frame" in proc.stdout
