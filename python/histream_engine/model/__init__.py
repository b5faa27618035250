"""The Wan2.1 DiT and its parameter-name maps."""

from .dit import WanDiT

__all__ = ["WanDiT"]
