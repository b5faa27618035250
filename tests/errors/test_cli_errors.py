"""The CLI's bad-input table: every verb, each row argv, exit code 2 and a fragment of the one-line message on
stderr, no traceback, and nothing written: no file at the row's ``--out`` and nothing new or changed in the rows'
folder. Every message speaks the CLI's words: no Python type or parameter name (language.py). Rows run in process
(``cli.main``) so the table costs no interpreter starts; anything escaping ``main`` fails the row the way a traceback
would."""

from pathlib import Path

import pytest

from histream_engine import cli

from .conftest import poison_time_zero
from .language import error_lines, python_words

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
    ("demo_frames", ["demo", "--frames", "10"], "--frames must be a positive integer of the form 4k+1 (e.g. 81), got 10"),
    ("demo_frames_chunks", ["demo", "--frames", "13"], "--frames 13 gives 4 latent frames, not a multiple of the chunk size"),
    ("demo_size", ["demo", "--height", "40"], "--height must be a positive multiple of 32"),
    ("demo_size_huge", ["demo", "--frames", "9", "--height", "16384", "--width", "16384", "--out", "{tmp}/h.mp4"],
     "GiB of available RAM"),
    ("demo_seed_negative", ["demo", *SMALL, "--seed", "-1", "--out", "{tmp}/s.mp4"], "--seed must be in [0, 2**63)"),
    ("demo_attention", ["demo", *SMALL, "--attention", "nope", "--out", "{tmp}/a.mp4"], "nope"),
    # issue 29 F9: FP8 is --precision fp8 on the verbs that have it, and no verb names an option it lacks
    ("demo_attention_fp8_core", ["demo", *SMALL, "--attention", "torch_fp8", "--out", "{tmp}/f.mp4"],
     "torch_fp8 is the FP8 core of torch, which reads e4m3 caches: ask for it with --attention torch --precision fp8"),
    ("demo_precision_without_core", ["demo", *SMALL, "--precision", "fp8", "--attention", "flash_attn", "--out", "{tmp}/f.mp4"],
     "--precision fp8 has no FP8 attention core for --attention flash_attn"),
    ("serve_attention_fp8_core", ["serve", "--attention", "triton_fp8"],
     "serve has no FP8 option (histream demo, generate and bench have --precision fp8)"),
    ("bench_attention_fp8_core", ["bench", "--attention", "torch_fp8"], "ask for it with --attention torch --precision fp8"),
    # issue 30, items 3 and 4: an abbreviated or misspelt flag is named first (tests/test_cli_parsing.py: every flag)
    ("generate_misspelt_flag", ["generate", "--promt", "a cat"], "unrecognized argument --promt; did you mean --prompt?"),
    ("demo_abbreviated_flag", ["demo", "--frame", "45"], "--frame: flags are never abbreviated; did you mean --frames?"),
    ("generate_model_dir_missing", generate(model_dir="/nonexist/wan"), "does not exist"),
    ("generate_model_dir_file", generate(model_dir="{tmp}/a_file"), "is a file; --model-dir names the folder"),
    ("generate_checkpoint_dir", generate("--checkpoint", "{tmp}"), "is a folder; name the weights file"),
    ("generate_device_bogus", generate()[:-1] + ["gpu0"], "unknown device 'gpu0'"),
    ("generate_out_proc", generate("--out", "/proc/g.mp4"), "cannot write --out /proc/g.mp4"),
    ("generate_out_under_file", generate("--out", "{tmp}/a_file/b/x.mp4"), "is a file, not a folder"),
    ("generate_schedule_file", generate("--schedule", "/nonexist/s.json"), "cannot read schedule file"),
    ("generate_schedule_ntk", generate("--schedule", "{tmp}/ntk.json"), "ntk must be true or false"),
    ("generate_schedule_name", generate("--schedule", "fast"), "unknown schedule 'fast'"),
    # issue 29 F10: a folder, a file that is no checkpoint, a pickle the weights-only loader refuses: one line each
    ("generate_tae_folder", generate("--tae", "{tmp}"), "is a folder, not a file: name taew2_1.pth or taew2_1.safetensors"),
    ("generate_tae_not_a_checkpoint", generate("--tae", "/etc/passwd"), "/etc/passwd is not a TAEHV checkpoint"),
    ("generate_tae_unpickling", generate("--tae", "{tmp}/code.pth"), "(UnpicklingError: Unsupported"),
    ("bench_tae_folder", ["bench", "--preset", "cpu-small", "--tae", "{tmp}"], "--tae: TAEHV weights {tmp} is a folder, not a file"),
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
    ("bench_frames", ["bench", "--preset", "cpu-small", "--frames", "10"], "--frames must be a positive integer of the form 4k+1"),
    # issue 29 F6 and F7: bench --live checks its arguments and --out before the soak, at parse time where it can
    ("bench_live_out_dir", ["bench", "--live", "--chunks", "12", "--out", "{tmp}"], "is a directory"),
    ("bench_live_out_under_file", ["bench", "--live", "--chunks", "12", "--out", "{tmp}/a_file/x.json"], "is a file, not a folder"),
    ("bench_live_minutes_negative", ["bench", "--live", "--minutes", "-1"], "argument --minutes: must be at least 1 (shorter soaks: --chunks), got -1"),
    ("bench_live_minutes_zero", ["bench", "--live", "--minutes", "0"], "argument --minutes: must be at least 1"),
    ("bench_live_minutes_tiny", ["bench", "--live", "--minutes", "0.0001"], "argument --minutes: must be at least 1"),
    ("bench_live_minutes_nan", ["bench", "--live", "--minutes", "nan"], "argument --minutes: must be at least 1 (shorter soaks: --chunks), got nan"),
    ("bench_live_few_chunks", ["bench", "--live", "--chunks", "3", "--minutes", "0.001"], "argument --chunks: must be at least 12"),
    ("bench_live_chunks_and_minutes", ["bench", "--live", "--chunks", "20", "--minutes", "2"], "argument --minutes: not allowed with argument --chunks"),
    ("bench_live_height_zero", ["bench", "--live", "--height", "0"], "argument --height: must be at least 1, got 0"),
    ("bench_live_height_unit", ["bench", "--live", "--height", "40"], "--height must be a positive multiple of 32"),
    ("export_size", ["export", "--preset", "tiny", "--height", "40", "--width", "32", "--out", "{tmp}/e"],
     "height must be a positive multiple of 32 (16 at the low resolution, which is 1/2 of it) for schedule 'histream', got 40"),
    ("export_dtype", ["export", "--preset", "tiny", *SIZE, "--dtype", "float64", "--out", "{tmp}/e"], "invalid choice: 'float64'"),
    # export writes a folder, checked before the model is built (test_export_checks_out_first)
    ("export_out_file", ["export", "--preset", "tiny", *SIZE, "--schedule", "self_forcing", "--out", "{tmp}/a_file"], "{tmp}/a_file"),
    ("build_trt_missing", ["build-trt", "--onnx", "/nonexist", "--precision", "fp16"], "TensorRT"),
]


class Code:
    def __reduce__(self):
        return (print, ("pickled code ran",))


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
    torch.save({"decoder.1.weight": Code()}, tmp / "code.pth")  # a pickle the weights-only loader refuses
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
    assert "usage:" in out.err or len(out.err.strip().splitlines()) == 1, out.err  # nothing but the message
    assert not python_words(error_lines(out.err)), f"Python words in a CLI message: {python_words(error_lines(out.err))}: {out.err}"
    if out_path is not None and not existed:
        assert not out_path.exists(), f"{out_path} was created"
    assert files_under(places["tmp"]) == before  # no partial file, no probe left, nothing overwritten


def test_export_checks_out_first(places, capsys, monkeypatch):
    monkeypatch.setattr(cli, "initialized_dit", lambda *a: pytest.fail("the DiT was built before --out was checked"))
    rc = run(["export", "--preset", "tiny", *SIZE, "--out", f"{places['tmp']}/a_file"])
    assert rc == 2 and "is a file" in capsys.readouterr().err


def test_the_language_check_sees_python_words():
    assert python_words("num_frames must be 4k+1, or None for an unbounded stream") == ["None", "num_frames"]
    assert python_words("pass a dict / JSON file; set kv_dtype='float8_e4m3fn'") == ["dict", "kv_dtype", "kv_dtype="]
    assert python_words("give prompt_embeds_path instead", allowed={"prompt_embeds"}) == ["prompt_embeds_path"]
    assert python_words("give prompt_embeds instead", allowed={"prompt_embeds"}) == []
    assert python_words("--frames 13 gives 4 latent frames; schedule 'self_forcing' in /tmp/nan_model/x_y.pt") == []
