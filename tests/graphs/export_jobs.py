"""The graph tests' exports (tests/graphs/test_onnx_export.py), as functions of the test model and as a script that
tests/background.py runs while the suite goes on: `python tests/graphs/export_jobs.py exports|fp8 FOLDER`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest's random_dit when run as a script

from conftest import random_dit  # noqa: E402
from histream_engine.graphs.onnx_export import export_graphs  # noqa: E402

SIZE = (33, 64, 96)  # 3 chunks; latents 8x12, so 4x6 high-res tokens and 2x3 low-res
# a full cache needs one graph more per chunk: two chunks show that at two thirds of the export time
FRAMES = {"histream_plus": 33, "self_forcing": 21}


def model():
    return random_dit("tiny", seed=8)


def graph_exports(dit, root: Path) -> dict[str, Path]:
    """Every graph of a histream_plus and a self_forcing video: schedule -> export folder."""
    return {s: export_graphs(dit, s, SIZE[1], SIZE[2], frames, root / s, log=lambda _: None).parent for s, frames in FRAMES.items()}


def fp8_export(dit, root: Path) -> Path:
    """One FP8 export of a whole `two_step` video (one chunk: step and recache at both resolutions). Its graphs see no
    window K/V; the window path is the same in FP8 graphs (only the blocks' linears are quantized) and is checked in
    the float32 graphs."""
    return export_graphs(dit, "two_step", 64, 96, 9, root, fp8=True, log=lambda _: None).parent


if __name__ == "__main__":
    kind, folder = sys.argv[1], Path(sys.argv[2])
    {"exports": graph_exports, "fp8": fp8_export}[kind](model(), folder)
