"""What `histream serve` refuses before it starts: an --embeds-dir that is missing, a file, or unreadable stops the
server with exit code 2 and one line, before a model loads or a port opens (with or without --ray), where it used to
start and then answer every request with HTTP 500; and --ray's replica and grace options, before a cluster starts."""

import os

import pytest

pytest.importorskip("fastapi")

from histream_engine import cli  # noqa: E402
from histream_engine.serve.app import create_app  # noqa: E402


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


def test_the_app_refuses_a_missing_folder_too(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        create_app(None, "no engine needed", embeds_dir=tmp_path / "nonexist")


@pytest.mark.parametrize("flags, message", [
    (["--gpus-per-replica", "2"], "needs sequence parallelism"),
    (["--replicas", "0"], "give a count >= 1 or 'auto'"),
    (["--replicas", "auto", "--min-replicas", "3", "--max-replicas", "2"], "need 1 <= min <= max"),
    (["--reconnect-grace-seconds", "-1"], "give 0 to 3600 seconds"),
], ids=["gpus_per_replica", "replicas", "min_over_max", "grace"])
def test_ray_options_are_refused_before_a_cluster_starts(capsys, monkeypatch, flags, message):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started before the options were checked")

    monkeypatch.setattr(ray, "init", no_cluster)
    assert cli.main(["serve", "--ray", "--port", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
