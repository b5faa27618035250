"""The CLI's bad-input table: every verb, each row argv, exit code 2 and a fragment of the one-line message on
stderr, no traceback, and nothing written. Rows run in process (``cli.main``) so the table costs no interpreter starts;
anything escaping ``main`` fails the row the way a traceback would."""

import pytest

from histream_engine import cli

EMBEDS = "{embeds}"  # replaced by the shared embeddings folder
SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--schedule", "self_forcing"]


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
    ("bench_out_proc", ["bench", "--preset", "cpu-small", "--out", "/proc/b.json"], "cannot write --out /proc/b.json"),
    ("bench_out_dir", ["bench", "--preset", "cpu-small", "--out", "{tmp}"], "is a directory"),
    ("bench_engine_dir", ["bench", "--preset", "cpu-small", "--dit", "onnxruntime", "--engine-dir", "/nonexist"],
     "--engine-dir /nonexist is not a folder"),
    ("export_out", ["export", "--preset", "tiny", "--height", "40", "--width", "32", "--out", "{tmp}/e"], "40"),
    ("build_trt_missing", ["build-trt", "--onnx", "/nonexist", "--precision", "fp16"], "TensorRT"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory, embeds_dir):
    from histream_engine.runtime.schedules import SCHEDULES
    import json

    import torch
    from histream_engine import WanDiT, save_dit
    from histream_engine.model.vae import VAEConfig, WanVAE
    from histream_engine.vae_checkpoint import save_vae

    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "a_file").write_text("")
    (tmp / "ntk.json").write_text(json.dumps({**SCHEDULES["self_forcing"].to_dict(), "ntk": "yes"}))
    model = tmp / "model"  # a tiny model in Wan's folder layout, as tests/engine/make_model_dir.py writes it
    torch.manual_seed(0)
    save_dit(WanDiT("tiny").eval(), model, format="wan")
    save_vae(WanVAE(VAEConfig(dim=16, num_res_blocks=0)).eval(), model / "vae", format="diffusers")
    return {"tmp": str(tmp), "embeds": str(embeds_dir), "model": str(model)}


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


@pytest.mark.parametrize("argv, fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_cli_input_exits_2_with_one_clear_line(places, capsys, argv, fragment):
    rc = run([a.format(**places) for a in argv])
    out = capsys.readouterr()
    assert rc == 2, out
    assert fragment in out.err, out.err
    assert "Traceback" not in out.err + out.out and "wrote" not in out.out
    assert len([line for line in out.err.splitlines() if "error" in line]) == 1, out.err
