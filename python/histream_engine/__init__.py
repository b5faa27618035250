"""histream_engine: HiStream inference for 1080p autoregressive video diffusion on Wan2.1.

Importing the package touches no GPU and imports no optional dependency.
"""

from . import flops
from .attention import attention_backends
from .checkpoint import CheckpointError, load_dit, save_dit
from .config import PRESETS, WanConfig
from .model import WanDiT
from .model.decoder import VideoDecoder
from .model.taehv import TAEHV, TAEHVConfig
from .model.vae import VAEConfig, WanVAE, to_uint8_frames
from .runtime import (SCHEDULES, ChunkResult, Engine, EngineConfig, GenerationResult, RequestError, RequestTypeError, Schedule,
                      Step, StreamClosedError, VideoStream)
from .provenance import package_version
from .runtime.runners.registry import dit_backends
from .runtime.stream_state import StreamState, StreamStateError, load_stream_state
from .runtime.parallel.group import ParallelGroup, init_parallel
from .text_encoder import TextEncoder, load_prompt_embeds, load_text_encoder
from .taehv_checkpoint import load_taehv, save_taehv
from .vae_checkpoint import load_vae, save_vae

__version__ = package_version()

__all__ = [
    "CheckpointError",
    "ChunkResult",
    "Engine",
    "EngineConfig",
    "GenerationResult",
    "PRESETS",
    "ParallelGroup",
    "RequestError",
    "RequestTypeError",
    "SCHEDULES",
    "Schedule",
    "Step",
    "StreamClosedError",
    "StreamState",
    "StreamStateError",
    "TAEHV",
    "TAEHVConfig",
    "TextEncoder",
    "VAEConfig",
    "VideoDecoder",
    "VideoStream",
    "WanConfig",
    "WanDiT",
    "WanVAE",
    "attention_backends",
    "dit_backends",
    "flops",
    "init_parallel",
    "load_dit",
    "load_prompt_embeds",
    "load_stream_state",
    "load_taehv",
    "load_text_encoder",
    "load_vae",
    "save_dit",
    "save_taehv",
    "save_vae",
    "to_uint8_frames",
]
