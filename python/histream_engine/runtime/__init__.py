"""The streaming runtime: schedules, KV caches, sampling and the Engine."""

from .engine import ChunkResult, Engine, EngineConfig, GenerationResult
from .denoise.schedules import SCHEDULES, Schedule, Step

__all__ = ["ChunkResult", "Engine", "EngineConfig", "GenerationResult", "SCHEDULES", "Schedule", "Step"]
