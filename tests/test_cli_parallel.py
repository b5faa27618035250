"""`torchrun ... -m histream_engine generate --parallel ulysses`: two gloo ranks on this CPU write one mp4, the one a
single process writes, and print the progress once."""

import json
import os
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest

from test_cli import model_dir, read_mp4  # noqa: F401 - the tiny Wan folder fixture (2 heads: 2 ranks divide them)


def frames(path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    w, h = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]).astype(np.int16)


# torchrun starts an agent and two ranks, each importing torch: about 20 s for both tests on 2 cores, so they run in
# the slow suite; tests/runtime/test_parallel.py's two ranks (the same engine code) run in the default one
TORCHRUN = pytest.mark.skipif(os.environ.get("HISTREAM_SLOW_TESTS") != "1", reason="torchrun runs: HISTREAM_SLOW_TESTS=1")


@TORCHRUN
def test_torchrun_generate_writes_one_mp4_from_rank_0(tmp_path, model_dir):  # noqa: F811
    args = ["generate", "--model-dir", str(model_dir), "--prompt-embeds", str(tmp_path / "prompt.pt"), "--schedule", "histream_plus",
            "--height", "64", "--width", "128", "--frames", "21", "--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "-m", "histream_engine", *args, "--parallel", "ulysses", "--out", str(tmp_path / "two.mp4")],
                             capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    assert sharded.stdout.count("chunk 2/2") == 1 and "2 ranks (ulysses)" in sharded.stdout
    single = subprocess.run([sys.executable, "-m", "histream_engine", *args, "--out", str(tmp_path / "one.mp4")],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert read_mp4(tmp_path / "two.mp4") == (21, (128, 64), 16.0)
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["one.mp4", "two.mp4"]
    # the same latents (to float rounding) encode to the same frames, up to the odd 8-bit step
    assert np.abs(frames(tmp_path / "two.mp4") - frames(tmp_path / "one.mp4")).max() <= 1


def test_parallel_outside_torchrun_says_how_to_start_it(tmp_path, model_dir):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "histream_engine", "generate", "--model-dir", str(model_dir), "--prompt-embeds",
                           str(tmp_path / "prompt.pt"), "--parallel", "ulysses", "--out", str(tmp_path / "x.mp4")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "torchrun --nproc-per-node N" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.mp4").exists()


@TORCHRUN
def test_torchrun_bench_records_the_world_size_per_rank_flops_and_bytes_sent(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                           "histream_engine", "bench", "--parallel", "ulysses", "--preset", "cpu-small", "--height", "64",
                           "--width", "64", "--frames", "21", "--schedules", "histream", "--repeats", "1", "--no-plot",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("2 ranks (ulysses)") == 1  # rank 0 alone prints
    record = json.loads(out.read_text())
    assert record["parallel"] == {"mode": "ulysses", "world_size": 2}
    run = record["schedules"]["histream"]
    par = run["parallel"]
    assert par["world_size"] == 2 and par["flops_per_rank_per_frame"] == run["flops_per_frame"] / 2
    # 64x64 gives 16 high-res and 4 low-res tokens a frame: 2 ranks split both evenly, so the count is exact
    assert par["bytes_sent_per_chunk"] == par["bytes_sent_per_chunk_model"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]
