"""ONNX export of the cached DiT forward, and the onnxruntime DiT runner: every graph a schedule needs passes
onnx.checker, holds no complex or unsupported op and equals its torch module through ONNX Runtime; whole videos
through ONNX Runtime equal the torch engine; what does not match an export is refused with the signature named."""

import json
import os
import shutil

import onnx
import onnxruntime as ort
import pytest
import torch

import background
import export_jobs
from conftest import random_dit, rel_err
from export_jobs import FRAMES, SIZE
from histream_engine import Engine, EngineConfig
from histream_engine.checkpoint import CheckpointError
from histream_engine.graphs.graph_forward import GraphForward, example_inputs
from histream_engine.graphs.onnx_export import check_graph_ops, export_graphs
from histream_engine.graphs.onnxruntime_session import OnnxRuntimeSession
from histream_engine.runtime.runners.registry import dit_backends
from histream_engine.graphs.manifest import MANIFEST, read_manifest
from histream_engine.graphs.signature import Signature



@pytest.fixture(scope="module")
def dit():
    return export_jobs.model()


@pytest.fixture(scope="module")
def exports():
    """export_jobs.graph_exports, built while earlier tests ran (tests/background.py)."""
    proc, root = background.result("graph_exports")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {s: root / s for s in FRAMES}


def prompt(dit):
    ctx = torch.randn(2, 20, dit.config.text_dim, generator=torch.Generator().manual_seed(4))
    ctx[0, 12:] = 0  # zero padding in one prompt: merged into one key with log(n), then padded to 512 with -inf
    return ctx


def test_export_covers_every_step_kind(exports):
    names = sorted(s.name for s in read_manifest(exports["histream_plus"]).graphs)
    assert names == sorted(f"{kind}-{res}-m3-w{w}-b1-float32" for kind in ("step", "recache")
                           for res in ("high-4x6", "low-2x3") for w in (3, 6))
    windows = sorted({s.window_frames for s in read_manifest(exports["self_forcing"]).graphs})
    assert windows == [3, 6]  # a full cache: one more window size per chunk


@pytest.mark.parametrize("schedule", ["histream_plus", "self_forcing"])
def test_every_graph_checks_and_equals_its_torch_module_in_onnxruntime(dit, exports, schedule):
    manifest = read_manifest(exports[schedule], dit)
    for sig, entry in manifest.graphs.items():
        path = manifest.root / entry["file"]
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        check_graph_ops(model)
        assert [i.name for i in model.graph.input] == list(entry["inputs"])
        inputs = example_inputs(dit, sig, seed=3)
        with torch.no_grad():
            want = GraphForward(dit, sig)(*inputs.values())
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        assert len(got) == len(want) == (3 if sig.head else 2)
        for g, w in zip(got, want):
            assert rel_err(torch.from_numpy(g), w) < 1e-5, sig.name


@pytest.mark.parametrize("schedule", ["histream_plus", "self_forcing"])
def test_whole_video_through_onnxruntime_equals_the_torch_engine(dit, exports, schedule):
    ctx = prompt(dit)
    video = (FRAMES[schedule], *SIZE[1:])
    ref = Engine(dit, EngineConfig()).generate(ctx[:1], *video, schedule=schedule, seed=1)
    got = Engine(dit, EngineConfig(dit="onnxruntime", engine_dir=str(exports[schedule]))).generate(ctx[:1], *video, schedule=schedule, seed=1)
    assert [c.run_mode for c in got.chunks] == ["onnxruntime"] * (FRAMES[schedule] // 12 + 1)
    assert [c.forwards for c in got.chunks] == [c.forwards for c in ref.chunks]
    assert rel_err(got.latents, ref.latents) <= 1e-4


def test_a_request_the_export_does_not_cover_is_refused_before_any_chunk(dit, exports):
    engine = Engine(dit, EngineConfig(dit="onnxruntime", engine_dir=str(exports["histream_plus"])))
    with pytest.raises(ValueError, match=r"no exported graph for signature recache-high-4x8-m3-w3-b1-float32"):
        engine.stream(prompt(dit)[:1], 33, 64, 128, schedule="histream_plus")
    with pytest.raises(ValueError, match=r"signature recache-high-4x6-m3-w3-b2-float32"):  # batch 2
        engine.stream(prompt(dit), *SIZE, schedule="histream_plus")


def test_export_refuses_a_signature_the_schedule_never_runs(dit, tmp_path):
    with pytest.raises(ValueError, match=r"never runs \['step-high-4x6-m3-w9-b1-float32'\]; it runs: recache-high-4x6-m3-w3"):
        export_graphs(dit, "histream", 64, 96, 33, tmp_path, only=["step-high-4x6-m3-w9-b1-float32"])


def copy_export(src, tmp_path):
    dst = tmp_path / "export"
    shutil.copytree(src, dst)
    return dst, json.loads((dst / MANIFEST).read_text())


def test_manifests_of_another_version_or_other_weights_are_refused(dit, exports, tmp_path):
    dst, record = copy_export(exports["histream_plus"], tmp_path)
    record["package_version"] = "0.0.9"
    (dst / MANIFEST).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="written by histream_engine 0.0.9, this is"):
        Engine(dit, EngineConfig(dit="onnxruntime", engine_dir=str(dst)))
    with pytest.raises(CheckpointError, match="exported from other weights"):
        Engine(random_dit("tiny", seed=9), EngineConfig(dit="onnxruntime", engine_dir=str(exports["histream_plus"])))
    with pytest.raises(CheckpointError, match="has no manifest.json: point engine_dir at a folder written by histream export"):
        Engine(dit, EngineConfig(dit="onnxruntime", engine_dir=str(tmp_path)))


def test_inputs_that_do_not_match_the_manifest_are_refused(dit, exports, tmp_path):
    dst, record = copy_export(exports["histream_plus"], tmp_path)
    for g in record["graphs"]:
        g["inputs"]["cross_k"][2] = 256  # as if exported for another text length
    (dst / MANIFEST).write_text(json.dumps(record))
    engine = Engine(dit, EngineConfig(dit="onnxruntime", engine_dir=str(dst)))
    with pytest.raises(ValueError, match=r"graph \S+-b1-float32: input cross_k has shape \[2, 1, 512, 2, 32\], the manifest says \[2, 1, 256, 2, 32\]"):
        list(engine.stream(prompt(dit)[:1], *SIZE, schedule="histream_plus"))


def test_runner_choices_are_checked_and_listed():
    listed = {name: (ok, why) for name, ok, why in dit_backends()}
    assert list(listed) == ["torch", "onnxruntime", "tensorrt"] and listed["torch"] == (True, "") and listed["onnxruntime"][0]
    if not listed["tensorrt"][0]:
        with pytest.raises(RuntimeError, match="dit='tensorrt' is unavailable: " + listed["tensorrt"][1].split(" (")[0]):
            Engine(random_dit("tiny"), EngineConfig(dit="tensorrt", engine_dir="x"))
    with pytest.raises(ValueError, match="unknown dit runner 'tvm'"):
        EngineConfig(dit="tvm")
    with pytest.raises(ValueError, match="cuda_graphs and compile apply to dit='torch'"):
        EngineConfig(dit="onnxruntime", cuda_graphs=True)
    with pytest.raises(ValueError, match="needs engine_dir"):
        Engine(random_dit("tiny"), EngineConfig(dit="onnxruntime"))
    with pytest.raises(ValueError, match="runs float32 or float16 graphs"):
        Engine(random_dit("tiny", dtype=torch.bfloat16), EngineConfig(dit="onnxruntime", engine_dir="x"))


def test_signature_shapes_follow_the_model():
    from histream_engine import PRESETS

    sig = Signature("high", (68, 120), 3, 6, 1, "bfloat16", True)
    inputs, outputs = sig.shapes(PRESETS["wan2.1-1.3b"])
    assert inputs["window_k"] == [30, 1, 3 * 8160, 12, 128] and inputs["rope_cos"] == [6 * 8160, 64]
    assert outputs["flow"] == [1, 16, 3, 136, 240] and outputs["chunk_k"] == [30, 1, 3 * 8160, 12, 128]
    assert "window_k" not in Signature("high", (68, 120), 3, 3, 1, "bfloat16", False).shapes(PRESETS["wan2.1-1.3b"])[0]


def in_range_inputs(dit, sig):
    """Graph inputs as the engine makes them (noise patches, a real timestep's sinusoid, a prompt's text K/V, RoPE
    tables), so activations fall in the range FP8 was calibrated on; the window's K/V are random."""
    from histream_engine.attention.rope import grid_positions, inv_freqs, rope_cos_sin
    from histream_engine.graphs.runners import GraphForwards

    inputs = example_inputs(dit, sig, seed=3)
    t = torch.full((sig.batch, sig.query_frames), 1000.0 if sig.head else 0.0)
    inputs["time_sinusoid"] = dit.time_sinusoid(t)
    cross = GraphForwards.prepare_cross(type("R", (), {"dit": dit})(), dit.cross_kv(prompt(dit)[:1]))
    inputs["cross_k"], inputs["cross_v"], inputs["cross_bias"] = cross
    pos = grid_positions(range(sig.window_frames), *sig.grid)
    inputs["rope_cos"], inputs["rope_sin"] = rope_cos_sin(pos, inv_freqs(dit.config.head_dim))
    return inputs


@pytest.fixture(scope="module")
def fp8_export():
    """export_jobs.fp8_export, shared by the graph check and the video check, built in the background."""
    proc, root = background.result("fp8_export")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def test_fp8_graphs_quantize_only_the_block_linears(dit, fp8_export):
    from histream_engine.graphs.fp8 import block_linears

    root = fp8_export
    manifest = read_manifest(root, dit)
    assert len(manifest.graphs) == 4
    L = dit.config.num_layers
    for sig, entry in manifest.graphs.items():
        model = onnx.load(str(root / entry["file"]))
        onnx.checker.check_model(model)
        quantized = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        # a recache graph's last block projects only K and V
        assert len(quantized) == (8 * L if sig.head else 8 * (L - 1) + 2)
        assert all(n.input[0].startswith("fp8.blocks.") or n.output[0].startswith("fp8.blocks.") for n in quantized)
        inputs = in_range_inputs(dit, sig)
        with torch.no_grad():
            want = GraphForward(dit, sig)(*inputs.values())
        session = OnnxRuntimeSession(root / entry["file"], entry, torch.device("cpu"), optimize=not manifest.fp8)
        got = session.run(inputs)
        errors = [rel_err(got[name], w) for name, w in zip(entry["outputs"], want)]
        # E4M3 keeps 3 mantissa bits (about 3% per rounding): quantization is on, and within a few roundings
        assert all(1e-3 < e < 0.1 for e in errors), (sig.name, errors)
    assert len(block_linears(dit)) == 8 * L and manifest.fp8


def test_fp8_video_through_onnxruntime_stays_near_the_torch_engine(dit, fp8_export):
    root = fp8_export
    ctx = prompt(dit)[:1]
    ref = Engine(dit, EngineConfig()).generate(ctx, 9, 64, 96, schedule="two_step", seed=1)
    got = Engine(dit, EngineConfig(dit="onnxruntime", engine_dir=str(root))).generate(ctx, 9, 64, 96, schedule="two_step", seed=1)
    assert 1e-3 < rel_err(got.latents, ref.latents) < 0.1


def test_cli_export_and_build_trt(cli_tiny_export, tmp_path, capsys):
    from histream_engine.cli import main

    code, out, stdout = cli_tiny_export  # shared with tests/bench (its --dit onnxruntime run)
    assert code == 0
    assert sorted(s.name for s in read_manifest(out).graphs) == [
        "recache-high-4x4-m3-w3-b1-float32", "recache-low-2x2-m3-w3-b1-float32",
        "step-high-4x4-m3-w3-b1-float32", "step-low-2x2-m3-w3-b1-float32"]
    assert "[4/4]" in stdout
    assert main(["export", "--preset", "tiny", "--height", "70", "--width", "64", "--out", str(tmp_path / "bad")]) == 2
    assert "height must be a positive multiple of 32" in capsys.readouterr().err
    if not dict((n, ok) for n, ok, _ in dit_backends())["tensorrt"]:
        assert main(["build-trt", "--onnx", str(out), "--precision", "bf16"]) == 2
        assert "histream build-trt needs TensorRT" in capsys.readouterr().err


def test_build_trt_checks_the_export_precision():
    from histream_engine.graphs.tensorrt_build import check_precision

    graphs = [{"signature": {"dtype": "float32"}}]
    with pytest.raises(ValueError, match="--precision bf16 needs graphs exported in bfloat16, these are \\['float32'\\]"):
        check_precision({"graphs": graphs}, "bf16")
    with pytest.raises(ValueError, match="--precision fp8 needs graphs exported with --fp8"):
        check_precision({"graphs": [{"signature": {"dtype": "bfloat16"}}]}, "fp8")
    check_precision({"graphs": [{"signature": {"dtype": "bfloat16"}}], "fp8": True}, "fp8")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HISTREAM_SLOW_TESTS") != "1", reason="the real 1.3B export takes minutes and 3 GB: HISTREAM_SLOW_TESTS=1")
def test_real_1_3b_export_keeps_its_weights_in_external_data(tmp_path):
    from histream_engine.model.dit import initialized_dit

    dit = initialized_dit("wan2.1-1.3b", torch.bfloat16, "cpu")
    name = "step-high-68x120-m3-w6-b1-bfloat16"
    root = export_graphs(dit, "histream", 1088, 1920, 81, tmp_path, only=[name], log=print).parent
    entry = read_manifest(root, dit).graphs[Signature("high", (68, 120), 3, 6, 1, "bfloat16", True)]
    assert entry["external_data"] and (root / (entry["file"] + ".data")).stat().st_size > 2.5e9
    onnx.checker.check_model(str(root / entry["file"]))
    check_graph_ops(onnx.load(str(root / entry["file"]), load_external_data=False))


def test_weights_fingerprint_is_the_same_at_any_thread_count_and_follows_the_weights(dit):
    from histream_engine.graphs.manifest import weights_fingerprint

    threads = torch.get_num_threads()
    try:
        prints = set()
        for n in (1, 2, 8):
            torch.set_num_threads(n)
            prints.add(weights_fingerprint(dit))
    finally:
        torch.set_num_threads(threads)
    assert len(prints) == 1
    other = random_dit("tiny", seed=8)
    with torch.no_grad():
        other.blocks[0].ffn[0].weight[0, 0] += 1.0  # a sampled element
    assert weights_fingerprint(other) not in prints
