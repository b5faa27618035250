"""The CLI's bad-input table: every verb, each row argv, exit code 2 and a fragment of the one-line message on
stderr, no traceback, and nothing written: no file at the row's ``--out`` and nothing new or changed in the rows'
folder. Rows run in process (``cli.main``) so the table costs no interpreter starts; anything escaping ``main`` fails
the row the way a traceback would."""

from pathlib import Path

import pytest

from histream_engine import cli

from .conftest import poison_time_zero

EMBEDS = "{embeds}"  # replaced by the shared embeddings folder
SIZE = ["--frames", "9", "--height", "32", "--width", "32"]
SMALL = [*SIZE, "--schedule", "self_forcing"]
TWO_CHUNKS = ["--frames", "21", "--height", "32", "--width", "32", "--schedule", "self_forcing"]


def generate(*extra, model_dir="{model}"):
    return ["generate", "--model-dir", model_dir, "--prompt-embeds", f"{EMBEDS}/good.pt", "--device", "cpu", *extra]


# (id, argv, message fragment)
ROWS = [
    ("demo_out_proc", ["demo", *SMALL, "--out", "/proc/x.mp4"], "cannot write --out /proc/x.mp4"),
    ("demo_out_dir", ["demo", *SMALL, "--out", "{tmp}"], "is a directory"),
    ("demo_out_under_file", ["demo", *SMALL, "--out", "{tmp}/a_file/x.mp4"], "is a file, not a folder"),
    ("demo_out_suffix", ["demo", *SMALL, "--out", "{tmp}/x.avi"], "must end in .mp4"),
    ("demo_frames", ["demo", "--frames", "10"], "4k+1"),
    ("demo_frames_chunks", ["demo", "--frames", "13"], "not a multiple of the chunk size"),
    ("demo_size", ["demo", "--height", "40"], "height must be a positive multiple of 32"),
    ("demo_size_huge", ["demo", "--frames", "9", "--height", "16384", "--width", "16384", "--out", "{tmp}/h.mp4"],
     "GiB of available RAM"),
    ("demo_seed_negative", ["demo", *SMALL, "--seed", "-1", "--out", "{tmp}/s.mp4"], "seed must be in [0, 2**63)"),
    ("demo_attention", ["demo", *SMALL, "--attention", "nope", "--out", "{tmp}/a.mp4"], "nope"),
    ("generate_model_dir_missing", generate(model_dir="/nonexist/wan"), "does not exist"),
    ("generate_model_dir_file", generate(model_dir="{tmp}/a_file"), "is a file; --model-dir names the folder"),
    ("generate_checkpoint_dir", generate("--checkpoint", "{tmp}"), "is a folder; name the weights file"),
    ("generate_device_bogus", generate()[:-1] + ["gpu0"], "unknown device 'gpu0'"),
    ("generate_out_proc", generate("--out", "/proc/g.mp4"), "cannot write --out /proc/g.mp4"),
    ("generate_out_under_file", generate("--out", "{tmp}/a_file/b/x.mp4"), "is a file, not a folder"),
    ("generate_schedule_file", generate("--schedule", "/nonexist/s.json"), "cannot read schedule file"),
    ("generate_schedule_ntk", generate("--schedule", "{tmp}/ntk.json"), "ntk must be true or false"),
    ("generate_embeds_nan", ["generate", "--model-dir", "{model}", "--prompt-embeds", f"{EMBEDS}/nan.pt", "--device", "cpu",
                             *SMALL, "--out", "{tmp}/n.mp4"], "NaN or Inf"),
    ("generate_embeds_batch", ["generate", "--model-dir", "{model}", "--prompt-embeds", f"{EMBEDS}/batch.pt", "--device", "cpu",
                               *SMALL, "--out", "{tmp}/b.mp4"], "batch of 2 prompts"),
    ("generate_embeds_complex", ["generate", "--model-dir", "{model}", "--prompt-embeds", f"{EMBEDS}/complex.pt", "--device",
                                 "cpu", *SMALL, "--out", "{tmp}/c.mp4"], "must be real floating"),
    ("generate_dtype", generate("--dtype", "float64", "--out", "{tmp}/d.mp4"), "argument --dtype: invalid choice: 'float64'"),
    # the model goes NaN after its first chunk (poison_time_zero): chunk 0's frames reach the mp4, then it is removed
    ("generate_non_finite", generate(*TWO_CHUNKS, "--dtype", "float32", "--out", "{tmp}/nan.mp4", model_dir="{nan_model}"),
     "chunk 1: the latents hold NaN or Inf after step 4/4"),
    ("bench_out_proc", ["bench", "--preset", "cpu-small", "--out", "/proc/b.json"], "cannot write --out /proc/b.json"),
    ("bench_out_dir", ["bench", "--preset", "cpu-small", "--out", "{tmp}"], "is a directory"),
    ("bench_engine_dir", ["bench", "--preset", "cpu-small", "--dit", "onnxruntime", "--engine-dir", "/nonexist"],
     "--engine-dir /nonexist is not a folder"),
    ("bench_dtype", ["bench", "--preset", "cpu-small", "--dtype", "float64", "--out", "{tmp}/d.json"],
     "argument --dtype: invalid choice: 'float64'"),
    ("export_size", ["export", "--preset", "tiny", "--height", "40", "--width", "32", "--out", "{tmp}/e"],
     "height must be a positive multiple of 32 (16 at the low resolution, which is 1/2 of it) for schedule 'histream', got 40"),
    ("export_dtype", ["export", "--preset", "tiny", *SIZE, "--dtype", "float64", "--out", "{tmp}/e"], "invalid choice: 'float64'"),
    # export writes a folder, checked before the model is built (test_export_checks_out_first)
    ("export_out_file", ["export", "--preset", "tiny", *SIZE, "--schedule", "self_forcing", "--out", "{tmp}/a_file"], "{tmp}/a_file"),
    ("build_trt_missing", ["build-trt", "--onnx", "/nonexist", "--precision", "fp16"], "TensorRT"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory, embeds_dir):
    from histream_engine.runtime.denoise.schedules import SCHEDULES
    import json

    import torch
    from histream_engine import WanDiT, save_dit
    from histream_engine.model.vae import VAEConfig, WanVAE
    from histream_engine.vae_checkpoint import save_vae

    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "a_file").write_text("")
    (tmp / "ntk.json").write_text(json.dumps({**SCHEDULES["self_forcing"].to_dict(), "ntk": "yes"}))
    model, nan_model = tmp / "model", tmp / "nan_model"  # tiny models in Wan's folder layout, as tests/engine/make_model_dir.py writes them
    torch.manual_seed(0)
    dit = WanDiT("tiny").eval()
    save_dit(dit, model, format="wan")
    vae = WanVAE(VAEConfig(dim=16, num_res_blocks=0)).eval()
    save_vae(vae, model / "vae", format="diffusers")
    poison_time_zero(dit, [s.timestep for s in SCHEDULES["self_forcing"].later])
    save_dit(dit, nan_model, format="wan")
    save_vae(vae, nan_model / "vae", format="diffusers")
    return {"tmp": str(tmp), "embeds": str(embeds_dir), "model": str(model), "nan_model": str(nan_model)}


def test_cuda_without_cuda_is_one_line(places, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = run([a.format(**places) for a in generate()[:-1] + ["cuda"]])
    assert rc == 2 and "no usable CUDA device" in capsys.readouterr().err


def run(argv) -> int:
    """cli.main's exit code; argparse's own refusals (bench's checks use them) exit through SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def files_under(folder: str) -> dict[str, tuple[int, int]]:
    """Every file below ``folder``: relative path -> (size, mtime)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*") if p.is_file()}


@pytest.mark.parametrize("argv, fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_cli_input_exits_2_with_one_clear_line(places, capsys, argv, fragment):
    argv = [a.format(**places) for a in argv]
    out_path = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    existed = out_path is not None and out_path.exists()
    before = files_under(places["tmp"])
    rc = run(argv)
    out = capsys.readouterr()
    assert rc == 2, out
    assert fragment.format(**places) in out.err, out.err
    assert "Traceback" not in out.err + out.out and "wrote" not in out.out
    assert len([line for line in out.err.splitlines() if "error:" in line]) == 1, out.err  # argparse's usage lines aside
    if out_path is not None and not existed:
        assert not out_path.exists(), f"{out_path} was created"
    assert files_under(places["tmp"]) == before  # no partial file, no probe left, nothing overwritten


def test_export_checks_out_first(places, capsys, monkeypatch):
    monkeypatch.setattr(cli, "initialized_dit", lambda *a: pytest.fail("the DiT was built before --out was checked"))
    rc = run(["export", "--preset", "tiny", *SIZE, "--out", f"{places['tmp']}/a_file"])
    assert rc == 2 and "is a file" in capsys.readouterr().err
