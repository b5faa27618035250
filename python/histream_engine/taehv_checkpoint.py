"""Load and save TAEHV in the published layout: ``taew2_1.pth`` (a plain state dict) or
``safetensors/taew2_1.safetensors``, keys ``decoder.N...`` and ``encoder.N...``.

The decoder is loaded by default and the encoder's tensors skipped; ``encoder=True`` loads both (for ``encode``).
``load_vae`` sends a file here when its keys are TAEHV's; the config is read from the tensors' shapes (so a
narrower TAEHV, such as the demo's, round-trips) and then every key loaded is checked against it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint import CheckpointError, _read_pickle, _read_safetensors, check_keys
from .model.dit import check_dtype
from .model.taehv import TAEHV, TAEHVConfig

WEIGHTS = "taew2_1.pth or taew2_1.safetensors from madebyollin/taehv"
_TAEHV_KEY = re.compile(r"^(decoder|encoder)\.\d+\.")


def is_taehv_state(state: dict) -> bool:
    """TAEHV's keys are ``nn.Sequential`` indices (``decoder.1.weight``); the Wan VAE's are names (``decoder.conv1``)."""
    return bool(state) and all(_TAEHV_KEY.match(k) for k in state)


def _config_from_shapes(state: dict, encoder: bool) -> TAEHVConfig:
    """The widths and TGrow (and TPool) strides the tensors imply; keys it needs but lacks leave the defaults
    (check_keys names them)."""
    decoder = _decoder_config(state)
    return _with_encoder_config(decoder, state) if encoder else decoder


def _decoder_config(state: dict) -> TAEHVConfig:
    default = TAEHVConfig()
    first = state.get("decoder.1.weight")
    if first is None or first.dim() != 4:
        return default
    head = state.get(f"decoder.{default.head_index}.weight")
    if head is not None and head.shape[0] != 3:
        raise CheckpointError(
            f"this TAEHV decodes to {head.shape[0]} channels per pixel (a patchified one, such as taew2_2 or taehv1_5); "
            "histream_engine decodes Wan2.1 latents: use taew2_1.pth")
    if first.shape[1] != default.latent_channels:
        raise CheckpointError(
            f"this TAEHV decodes {first.shape[1]}-channel latents; Wan2.1's have {default.latent_channels}: use taew2_1.pth")
    channels, strides = [first.shape[0]], []
    for stage in range(3):
        idx = default.stage_indices(stage)
        grow, conv = state.get(f"decoder.{idx['grow']}.conv.weight"), state.get(f"decoder.{idx['conv']}.weight")
        if grow is None or conv is None or grow.shape[0] % channels[-1]:
            return default
        strides.append(grow.shape[0] // channels[-1])
        channels.append(conv.shape[0])
    return TAEHVConfig(channels=tuple(channels), time_upscale=tuple(strides))


def _with_encoder_config(config: TAEHVConfig, state: dict) -> TAEHVConfig:
    first = state.get("encoder.0.weight")
    if first is None or first.dim() != 4:
        return config
    if first.shape[1] != 3:
        raise CheckpointError(f"this TAEHV encodes {first.shape[1]} channels per pixel (a patchified one, such as taew2_2 "
                              "or taehv1_5); histream_engine encodes to Wan2.1 latents: use taew2_1.pth")
    width, strides = first.shape[0], []
    for stage in range(3):
        pool = state.get(f"encoder.{config.encoder_stage_indices(stage)['pool']}.conv.weight")
        if pool is None or pool.dim() != 4 or pool.shape[1] % width:
            return dataclasses.replace(config, encoder_channels=width)
        strides.append(pool.shape[1] // width)
    if math.prod(strides) != config.frames_per_latent:
        raise CheckpointError(f"this TAEHV's encoder pools {math.prod(strides)} frames per latent frame (TPool strides "
                              f"{tuple(strides)}) and its decoder makes {config.frames_per_latent}: use taew2_1.pth")
    return dataclasses.replace(config, encoder_channels=width, time_downscale=tuple(strides))


def taehv_from_state(state: dict, source: Path, dtype: torch.dtype = torch.float32, device="cpu",
                     encoder: bool = False) -> TAEHV:
    if encoder and not any(k.startswith("encoder.") for k in state):
        raise CheckpointError(f"{source} holds no TAEHV encoder (no encoder.* keys): use the full taew2_1.pth or "
                              "taew2_1.safetensors from madebyollin/taehv, or load it without encoder=True")
    wanted = {k: v for k, v in state.items() if encoder or not k.startswith("encoder.")}
    config = _config_from_shapes(wanted, encoder)
    with torch.device("meta"):
        model = TAEHV(config, with_encoder=encoder)
    check_keys(model, wanted, source, "TAEHV encoder and decoder" if encoder else "TAEHV decoder")
    model.load_state_dict(wanted, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if model.device.type == "cuda":  # its frames are channels-last there (TAEHV.decode): weights too, or cuDNN converts them per call
        model = model.to(memory_format=torch.channels_last)
    return model


def load_taehv(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device="cpu", encoder: bool = False) -> TAEHV:
    """``taew2_1.pth`` or ``taew2_1.safetensors`` -> the streaming TAEHV decoder; with ``encoder``, its encoder too."""
    check_dtype(dtype)
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"TAEHV weights {path} is a folder, not a file: name {WEIGHTS} inside it")
    if not path.is_file():
        raise CheckpointError(f"TAEHV weights {path} do not exist ({WEIGHTS})")
    try:
        state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path)
    except CheckpointError as e:
        raise CheckpointError(f"{path} is not a TAEHV checkpoint ({WEIGHTS}): {e}") from e
    if not is_taehv_state(state):
        raise CheckpointError(f"{path} is not a TAEHV checkpoint ({WEIGHTS}): its keys are not decoder.N / encoder.N "
                              f"(first keys: {sorted(state)[:4]})")
    return taehv_from_state(state, path, dtype, device, encoder)


def save_taehv(model: TAEHV, path: str | os.PathLike) -> Path:
    """The published layout: ``.safetensors`` by suffix, else a ``.pth`` state dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path
