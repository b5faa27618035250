import os
import subprocess
import sys

import pytest
import torch

from conftest import random_dit
from histream_engine import VAEConfig, WanVAE, save_dit, save_vae
from histream_engine.cli import main

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")


def read_mp4(path):
    """(frame count, (width, height), fps) of an mp4, read back with ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"]), meta["fps"]


def test_demo_prints_one_row_per_chunk_and_writes_the_mp4(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--frames", "33", "--height", "64", "--width", "96", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["chunk", "low", "high"])
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert [(int(r[1]), int(r[2]), int(r[3])) for r in rows] == [(2, 2, 2)] * 3  # histream: 2 low, 2 high, 2 recache
    assert [int(r[4]) for r in rows] == [9, 12, 12]
    assert len({r[6] for r in rows}) == 1  # constant cache size
    assert all(float(r[7]) > 0 and float(r[9]) > 0 for r in rows)
    assert lines[-1] == f"wrote {out.resolve()}"
    assert read_mp4(out) == (33, (96, 64), 16.0)


def test_demo_bad_frames_exits_nonzero_with_message(tmp_path, capsys):
    assert main(["demo", "--frames", "10", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "4k+1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_console_script_runs_as_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "histream_engine.cli", "demo", "--frames", "9", "--height", "32", "--width", "32",
         "--schedule", "self_forcing", "--out", str(tmp_path / "d.mp4")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ms/frame" in proc.stdout and (tmp_path / "d.mp4").exists()


@pytest.fixture
def model_dir(tmp_path):
    """A tiny Wan2.1-layout folder: DiT (Wan format), Wan2.1_VAE.pth, and prompt embeddings beside it."""
    folder = tmp_path / "Wan2.1-tiny"
    dit = random_dit("tiny", seed=3, std=0.05)
    save_dit(dit, folder, format="wan")
    torch.manual_seed(4)
    save_vae(WanVAE(VAEConfig(dim=8)), folder / "Wan2.1_VAE.pth")
    torch.save(torch.randn(512, dit.config.text_dim), tmp_path / "prompt.pt")
    return folder


def test_generate_writes_an_mp4_of_the_right_size(tmp_path, model_dir, capsys):
    out = tmp_path / "video" / "out.mp4"
    args = ["generate", "--model-dir", str(model_dir), "--prompt-embeds", str(tmp_path / "prompt.pt"), "--schedule", "histream_plus",
            "--height", "64", "--width", "128", "--frames", "21", "--dtype", "float32", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "chunk 2/2" in text and "s/frame" in text
    assert read_mp4(out) == (21, (128, 64), 16.0)
    assert [p.name for p in out.parent.iterdir()] == ["out.mp4"]  # no partial file left


def test_generate_with_a_self_forcing_checkpoint_override(tmp_path, model_dir):
    save_dit(random_dit("tiny", seed=9, std=0.05), tmp_path / "causal.pt", format="self_forcing")
    out = tmp_path / "o.mp4"
    assert main(["generate", "--model-dir", str(model_dir), "--checkpoint", str(tmp_path / "causal.pt"),
                 "--prompt-embeds", str(tmp_path / "prompt.pt"), "--height", "64", "--width", "64", "--frames", "9",
                 "--dtype", "float32", "--out", str(out)]) == 0
    assert read_mp4(out)[0] == 9


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--frames": "0"}, "4k+1"),
        ({"--frames": "-7"}, "4k+1"),
        ({"--height": "72"}, "multiple of 32"),
        ({"--prompt-embeds": "missing.pt"}, "does not exist"),
        ({"--prompt-embeds": "garbage.pt"}, "cannot read prompt embeddings"),
        ({"--model-dir": "empty"}, "is missing: dit"),
        ({"--prompt-embeds": None, "--prompt": "a cat"}, "text_encoder"),
    ],
)
def test_generate_bad_inputs_fail_cleanly(tmp_path, model_dir, capsys, change, message):
    (tmp_path / "garbage.pt").write_bytes(b"not a tensor")
    (tmp_path / "empty").mkdir()
    opts = {"--model-dir": str(model_dir), "--prompt-embeds": "prompt.pt", "--height": "64", "--width": "64",
            "--frames": "9", "--dtype": "float32", "--out": str(tmp_path / "out" / "bad.mp4")}
    for key, value in change.items():
        opts[key] = value
    for key in ("--prompt-embeds", "--model-dir"):
        if opts.get(key) and not opts[key].startswith("/"):
            opts[key] = str(tmp_path / opts[key])
    argv = ["generate"] + [x for k, v in opts.items() if v is not None for x in (k, v)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_generate_with_tae_decodes_with_taehv(tmp_path, model_dir, capsys):
    from histream_engine import TAEHV, TAEHVConfig, save_taehv

    torch.manual_seed(5)
    save_taehv(TAEHV(TAEHVConfig(channels=(16, 8, 8, 8))), tmp_path / "taew2_1.pth")
    (model_dir / "Wan2.1_VAE.pth").unlink()  # not needed with --tae
    out = tmp_path / "t.mp4"
    base = ["generate", "--model-dir", str(model_dir), "--prompt-embeds", str(tmp_path / "prompt.pt"), "--height", "64",
            "--width", "64", "--frames", "9", "--dtype", "float32", "--out", str(out)]
    assert main(base + ["--tae", str(tmp_path / "taew2_1.pth")]) == 0
    assert "(decoder taehv)" in capsys.readouterr().out and read_mp4(out)[0] == 9
    assert main(base + ["--tae", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth do not exist" in capsys.readouterr().err


def test_the_demo_engine_takes_either_tiny_decoder():
    from histream_engine.demo import TINY_TAEHV, tiny_demo_engine

    engine, _ = tiny_demo_engine(decoder="tae")
    assert engine.vae.name == "taehv" and engine.vae.config == TINY_TAEHV and engine.vae.latent_channels == engine.dit.config.out_dim
    assert tiny_demo_engine()[0].vae.name == "wan"
    with pytest.raises(ValueError, match="unknown demo decoder"):
        tiny_demo_engine(decoder="taew")


@pytest.mark.skipif(os.environ.get("HISTREAM_SLOW_TESTS") != "1", reason="a second whole demo run: HISTREAM_SLOW_TESTS=1")
def test_demo_with_the_tiny_taehv(tmp_path, capsys):
    assert main(["demo", "--tae", "--frames", "9", "--height", "32", "--width", "32", "--schedule", "self_forcing",
                 "--out", str(tmp_path / "d.mp4")]) == 0
    text = capsys.readouterr().out
    assert "tiny TAEHV" in text and "decoder taehv" in text and read_mp4(tmp_path / "d.mp4")[0] == 9


def test_from_pretrained_checks_the_decoder_choice_before_loading(tmp_path):
    from histream_engine import Engine

    for kwargs in ({"vae": "tae"}, {"vae": "wan", "tae_path": "taew2_1.pth"}, {"vae": "taehv", "tae_path": "x"}):
        with pytest.raises(ValueError, match="vae must be 'wan', or 'tae' with tae_path"):
            Engine.from_pretrained(tmp_path / "nothing-here", **kwargs)


def test_demo_runs_fp8_with_precision(tmp_path, capsys):
    """Issue 29 F9: FP8 on the command line is --precision fp8 (EngineConfig.with_precision), as on the bench."""
    out = tmp_path / "fp8.mp4"
    assert main(["demo", "--precision", "fp8", "--frames", "9", "--height", "32", "--width", "32", "--schedule", "self_forcing",
                 "--out", str(out)]) == 0
    assert "attention torch_fp8, precision fp8" in capsys.readouterr().out and read_mp4(out)[0] == 9
