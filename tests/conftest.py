import os

import pytest
import torch

# Kernels read TRITON_INTERPRET when they are defined, so it is set before anything imports them:
# without a GPU they run in Triton's CPU interpreter (a logic check; rerun compiled on a GPU).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from histream_engine import WanConfig, WanDiT


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b||, computed in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def random_dit(config: WanConfig | str = "tiny", seed: int = 0, std: float = 0.1, dtype=torch.float32) -> WanDiT:
    """A DiT with every weight drawn N(0, std^2): larger than default init so that errors anywhere show."""
    torch.manual_seed(seed)
    dit = WanDiT(config)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, std)
    return dit.cast(dtype).eval().requires_grad_(False)


@pytest.fixture
def tiny_dit() -> WanDiT:
    return random_dit("tiny")
