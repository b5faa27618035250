"""What a graph runner runs: one exported graph on named torch tensors."""

from __future__ import annotations

from typing import Protocol

import torch


class GraphSession(Protocol):
    """One graph, run on named torch tensors: ``run(inputs) -> outputs``."""

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
