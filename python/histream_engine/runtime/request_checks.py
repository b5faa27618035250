"""The checks every request goes through once, wherever it entered (Python API, CLI, serve, the C++ host): prompt
embeddings, seeds, chunk sizes, the model's dtype and the device. Each refusal says what was wrong and what to pass.

``RequestError`` is a ValueError (and ``RequestTypeError`` also a TypeError), so callers that already turn
ValueError into exit code 2 or HTTP 400 need no new clause.
"""

from __future__ import annotations

import torch

SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes a 64-bit seed; larger or negative ones alias others
MODEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
PROMPT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class RequestError(ValueError):
    """A request the engine refuses before it does any work.

    ``param`` names the argument refused by its Python name (``num_frames``), and the message names it that way, first
    or as ``num_frames=...``, so that an entry point that calls it otherwise (the CLI's ``--frames``, a JSON field)
    can say it in its own words. ``python_hint`` is advice only a Python caller can take (``or None for an unbounded
    stream``): ``str()`` ends with it, ``message`` is the rest."""

    def __init__(self, message: str, param: str | None = None, python_hint: str = ""):
        super().__init__(message + python_hint)
        self.message, self.param, self.python_hint = message, param, python_hint

    def __reduce__(self):  # pickled whole (a Ray replica's refusal crosses processes)
        return type(self), (self.message, self.param, self.python_hint)


class RequestTypeError(RequestError, TypeError):
    """A request argument of the wrong Python type."""


def check_prompt_embeds(embeds, text_dim: int, max_batch: int | None = None) -> torch.Tensor:
    """Prompt embeddings ``[L, text_dim]`` or ``[B, L, text_dim]`` -> ``[B, L, text_dim]``, unchanged otherwise.

    The one check every way a prompt enters goes through: a stream's first prompt and every switch, from Python, the
    CLI, serve (start and switch, over WebSocket or REST, on either transport) and the C++ host. Refuses non-tensors,
    sparse and meta tensors, dtypes other than ``PROMPT_DTYPES``, empty batches or prompts, the wrong width,
    non-finite values (they decode to a black video) and, where an entry point streams one prompt, batches over
    ``max_batch``.
    """
    if not isinstance(embeds, torch.Tensor):
        raise RequestTypeError(f"prompt embeddings must be a torch.Tensor [B, L, {text_dim}], got {type(embeds).__name__}; "
                               "convert with torch.as_tensor(x, dtype=torch.float32)")
    if embeds.layout != torch.strided:
        raise RequestError(f"prompt embeddings must be a dense tensor, got layout {str(embeds.layout).replace('torch.', '')}; "
                           "convert with .to_dense()")
    if embeds.device.type == "meta":
        raise RequestError("prompt embeddings are on the meta device, which holds shapes but no values: load the real tensor")
    if embeds.dtype not in PROMPT_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in PROMPT_DTYPES)
        raise RequestError(f"prompt embeddings must be a real floating tensor ({names}), got {str(embeds.dtype).replace('torch.', '')}")
    if embeds.dim() == 2:
        embeds = embeds.unsqueeze(0)  # [1, L, text_dim]
    if embeds.dim() != 3 or embeds.shape[-1] != text_dim:
        raise RequestError(f"prompt embeddings must be [L, text_dim={text_dim}] or [B, L, text_dim={text_dim}], got shape {tuple(embeds.shape)}")
    batch, length = embeds.shape[:2]
    if batch < 1 or length < 1:
        raise RequestError(f"prompt embeddings need a batch >= 1 and >= 1 token, got shape {tuple(embeds.shape)}")
    if max_batch is not None and batch > max_batch:
        raise RequestError(f"the prompt embeddings hold a batch of {batch} prompts; this entry point streams {max_batch}: "
                           "save one prompt's [L, dim] tensor per file")
    if not bool(torch.isfinite(embeds).all()):  # one reduction, one sync, before any model work
        bad = int((~torch.isfinite(embeds)).sum())
        raise RequestError(f"prompt embeddings hold {bad} NaN or Inf values; recompute them (they would decode to a black video)")
    return embeds


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RequestTypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}", param="seed")
    if not 0 <= seed < SEED_LIMIT:
        raise RequestError(f"seed must be in [0, 2**63), got {seed}", param="seed")
    return seed


def check_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise RequestTypeError(f"chunk_size must be an integer (latent frames per chunk), got {type(chunk_size).__name__} {chunk_size!r}")
    if chunk_size < 1:
        raise RequestError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def check_model_dtype(dtype: torch.dtype) -> None:
    if dtype not in MODEL_DTYPES:
        names = [str(d).replace("torch.", "") for d in MODEL_DTYPES]
        raise RequestError(f"the DiT is {str(dtype).replace('torch.', '')}; the engine runs {names}: cast it with dit.cast(torch.float32)")


def resolve_device(device) -> torch.device:
    """``None`` -> cuda when visible, else cpu; refuses a device this machine does not have."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RequestError(f"unknown device {device!r} ({exc}); use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RequestError(f"device {device!r} asked for, but this machine has no usable CUDA device "
                               f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RequestError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type not in ("cpu", "meta"):
        raise RequestError(f"device {device!r} is not supported; use cpu or cuda")
    return dev
