"""The one measure of numerical agreement that the tests, the benchmarks and the precision reports all use."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b|| of ``a`` against the reference ``b``, computed in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()
