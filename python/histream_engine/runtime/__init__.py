"""The streaming runtime: the Engine, its streams and their results; schedules, KV caches, sampling, runners and
sequence parallelism in their rooms (``denoise/``, ``cache/``, ``runners/``, ``parallel/``)."""

from .denoise.schedules import SCHEDULES, Schedule, Step
from .engine import Engine
from .engine_config import EngineConfig
from .request_checks import RequestError, RequestTypeError
from .results import ChunkResult, GenerationResult
from .stream import StreamClosedError, VideoStream

__all__ = ["ChunkResult", "Engine", "EngineConfig", "GenerationResult", "RequestError", "RequestTypeError", "SCHEDULES",
           "Schedule", "Step", "StreamClosedError", "VideoStream"]
