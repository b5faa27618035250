"""histream_engine: HiStream inference for 1080p autoregressive video diffusion on Wan2.1.

Importing the package touches no GPU and imports no optional dependency.
"""

from . import flops
from .attention import attention_backends
from .checkpoint import CheckpointError, load_dit, save_dit
from .config import PRESETS, WanConfig
from .model import WanDiT
from .runtime import SCHEDULES, ChunkResult, Engine, EngineConfig, GenerationResult, Schedule, Step

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ChunkResult",
    "Engine",
    "EngineConfig",
    "GenerationResult",
    "PRESETS",
    "SCHEDULES",
    "Schedule",
    "Step",
    "WanConfig",
    "WanDiT",
    "attention_backends",
    "flops",
    "load_dit",
    "save_dit",
]
