"""TensorRT engines built from exported graphs, against the torch engine (skipped, with the reason, where TensorRT or a
GPU is missing: the lent machines have no TensorRT, so these have not run yet; docs/graphs.md)."""

import pytest
import torch

from conftest import random_dit, rel_err
from histream_engine import Engine, EngineConfig
from histream_engine.runtime.runners.registry import RUNNERS

WHY = RUNNERS.entry("tensorrt").unavailable_reason()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")

SIZE = (33, 64, 96)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_tensorrt_video_error_at_most_twice_torchs_own(precision, dtype, tmp_path):
    from histream_engine.graphs.onnx_export import export_graphs
    from histream_engine.graphs.tensorrt_build import build_trt

    ctx = torch.randn(1, 20, random_dit("tiny").config.text_dim, device="cuda")

    def video(config, dt):
        dit = random_dit("tiny", seed=8, dtype=dt).cuda()
        return dit, Engine(dit, config).generate(ctx.to(dt), *SIZE, schedule="histream_plus", seed=1)

    _, ref = video(EngineConfig(), torch.float32)
    dit, own = video(EngineConfig(), dtype)
    export_graphs(dit, "histream_plus", SIZE[1], SIZE[2], SIZE[0], tmp_path / "onnx", log=lambda _: None)
    engines = build_trt(tmp_path / "onnx", precision, log=lambda _: None)
    _, got = video(EngineConfig(dit="tensorrt", engine_dir=str(engines)), dtype)
    assert [c.run_mode for c in got.chunks] == ["tensorrt"] * 3
    assert rel_err(got.latents, ref.latents) <= 2 * rel_err(own.latents, ref.latents)
    rebuilt = build_trt(tmp_path / "onnx", precision, log=lambda line: pytest.fail(line) if "built" in line else None)
    assert rebuilt == engines  # every engine is cached: nothing is built twice
