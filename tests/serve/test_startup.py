"""What `histream serve` refuses before it starts: an --embeds-dir that is missing, a file, or unreadable stops the
server with exit code 2 and one line, before a model loads or a port opens (with or without --ray), where it used to
start and then answer every request with HTTP 500; limits that would refuse every request or none, and ports that
cannot be, the same way (F8); and --ray's replica and grace options, before a cluster starts; a cluster with no node
that holds one replica's ranks (--gpus-per-replica N), before deploying. `--port 0` prints the port it got."""

import os
import re
import signal
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")

from histream_engine import cli  # noqa: E402
from histream_engine.serve.local.transport import local_app  # noqa: E402


@pytest.mark.parametrize("ray", [False, True], ids=["one process", "ray"])
def test_a_missing_embeddings_folder_stops_the_server_with_one_line(tmp_path, capsys, ray):
    argv = ["serve", "--embeds-dir", str(tmp_path / "nonexist"), "--port", "1"]  # port 1: it must never get that far
    assert cli.main(argv + (["--ray"] if ray else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("histream: error: --embeds-dir ") and "does not exist" in err
    assert "Traceback" not in err


def test_a_file_as_the_embeddings_folder_names_what_to_give(tmp_path, capsys):
    (tmp_path / "one.pt").write_bytes(b"")
    assert cli.main(["serve", "--embeds-dir", str(tmp_path / "one.pt"), "--port", "1"]) == 2
    assert "is a file, not a folder: name the folder that holds it" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_embeddings_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0)
    try:
        assert cli.main(["serve", "--embeds-dir", str(folder), "--port", "1"]) == 2
        assert "cannot be read" in capsys.readouterr().err
    finally:
        folder.chmod(0o700)


# (id, flags, the one line's words); F8: each started a server that refused every request, or hung, or exited 3
LIMIT_ROWS = [
    ("record_zero", ["--max-record-seconds", "0"], "--max-record-seconds 0.0: give a finite number of seconds > 0"),
    ("live_nan", ["--max-live-seconds", "nan"], "--max-live-seconds nan: give a finite number of seconds > 0"),
    ("replay_inf", ["--max-replay-seconds", "inf"], "--max-replay-seconds inf: give a finite number of seconds > 0"),
    ("queue_zero", ["--max-queue", "0"], "--max-queue 0: give a whole number >= 1"),
    ("frames_negative", ["--max-frames", "-5"], "--max-frames -5: give a whole number >= 1"),
    ("side_tiny", ["--max-side", "8"], "--max-side 8: give a whole number >= 16"),
    ("port_high", ["--port", "70000"], "--port 70000: give a TCP port from 1 to 65535, or 0 for any free one"),
    ("port_negative", ["--port", "-1"], "--port -1: give a TCP port from 1 to 65535"),
    ("resumes_negative", ["--max-resumes", "-1"], "--max-resumes -1: give a whole number >= 0 (0: never resume)"),
    ("resume_within_zero", ["--resume-within", "0"], "--resume-within 0.0: give a finite number of seconds > 0"),
]


@pytest.mark.parametrize("ray", [[], ["--ray"]], ids=["one process", "ray"])
def test_a_data_dir_that_cannot_keep_jobs_stops_the_server_with_one_line(tmp_path, capsys, ray):
    (tmp_path / "file").write_bytes(b"")
    assert cli.main(["serve", "--data-dir", str(tmp_path / "file"), "--port", "1", *ray]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder: name a folder for the stored videos" in err, err


@pytest.mark.parametrize("ray", [False, True], ids=["one process", "ray"])
@pytest.mark.parametrize("flags, message", [r[1:] for r in LIMIT_ROWS], ids=[r[0] for r in LIMIT_ROWS])
def test_a_limit_or_port_that_cannot_work_stops_the_server_with_one_line(capsys, monkeypatch, flags, message, ray):
    from histream_engine import host

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(host, "tiny_demo", no_model)
    argv = ["serve", "--port", "1", *flags] + (["--ray"] if ray else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"histream: error: {message}\n" or (err.count("\n") == 1 and message in err), err


def test_a_port_in_use_is_one_line(capsys):
    from histream_engine.serve.local.server import listen

    with listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        taken.listen()
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            listen("127.0.0.1", port)


def test_port_0_prints_the_port_it_got_and_serves_there():
    httpx = pytest.importorskip("httpx")
    proc = subprocess.Popen([sys.executable, "-m", "histream_engine", "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        said = [proc.stdout.readline() for _ in range(2)]
        got = re.fullmatch(r"open http://127\.0\.0\.1:(\d+)/ \(Ctrl-C stops\)\n", said[1])
        assert got and int(got.group(1)) > 0, said
        info = httpx.get(f"http://127.0.0.1:{got.group(1)}/api/info", timeout=30)
        assert info.status_code == 200 and info.json()["limits"]["max_queue"] == 8
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_app_refuses_a_missing_folder_too(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        local_app(None, "no engine needed", embeds_dir=tmp_path / "nonexist")


@pytest.mark.parametrize("flags, message", [
    (["--gpus-per-replica", "0"], "--gpus-per-replica 0: give 1, or N > 1"),
    # the tiny demo model has 2 heads, dealt out to the ranks
    (["--gpus-per-replica", "3"], "the model's 2 attention heads out to the ranks, and 2 is not divisible by 3: use one of [1, 2]"),
    (["--gpus-per-replica", "2", "--device", "cuda:1"], "each rank runs on the GPU Ray gives it; give --device cuda"),
    (["--replicas", "0"], "give a count >= 1 or 'auto'"),
    (["--replicas", "auto", "--min-replicas", "3", "--max-replicas", "2"], "need 1 <= min <= max"),
    (["--reconnect-grace-seconds", "-1"], "give 0 to 3600 seconds"),
], ids=["gpus_per_replica", "heads", "device_index", "replicas", "min_over_max", "grace"])
def test_ray_options_are_refused_before_a_cluster_starts(capsys, monkeypatch, flags, message):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started before the options were checked")

    monkeypatch.setattr(ray, "init", no_cluster)
    assert cli.main(["serve", "--ray", "--port", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_replica_of_n_ranks_is_packed_on_one_node_that_can_hold_it():
    pytest.importorskip("ray")
    from histream_engine.serve.ray.deploy import Scaling, check_cluster_fits

    gpus = Scaling(1, cpus_per_replica=2, gpus_per_rank=1, ranks=4)
    assert gpus.options(3)["placement_group_bundles"] == [{"CPU": 2, "GPU": 1}] * 4
    assert gpus.options(3)["placement_group_strategy"] == "STRICT_PACK"
    assert gpus.options(3)["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}  # the replica: rank 0, bundle 0
    check_cluster_fits(gpus, [{"CPU": 8, "GPU": 2}, {"CPU": 16, "GPU": 4}])
    with pytest.raises(ValueError) as refused:  # 9 GPUs in all, but no node with 4 GPUs and 8 CPUs
        check_cluster_fits(gpus, [{"CPU": 8, "GPU": 2}, {"CPU": 64, "GPU": 3}, {"CPU": 6, "GPU": 4}])
    assert str(refused.value) == (
        "--gpus-per-replica 4 packs a replica's 4 ranks on one node (STRICT_PACK), 8 CPU and 4 GPU in all, and no node "
        "of this Ray cluster has that (its nodes: 8 CPU, 2 GPU; 64 CPU, 3 GPU; 6 CPU, 4 GPU): lower --gpus-per-replica "
        "(or --cpus-per-replica), or add a larger node")
    cpus = Scaling(1, cpus_per_replica=0.5, ranks=2)  # --device cpu: bundles of CPUs only
    assert cpus.options(3)["placement_group_bundles"] == [{"CPU": 0.5}] * 2
    with pytest.raises(ValueError, match="give --cpus-per-replica > 0"):
        Scaling(1, cpus_per_replica=0, ranks=2).options(3)
    assert "placement_group_bundles" not in Scaling(1).options(3)  # one GPU a replica, as before
