"""Where the parts of a Wan2.1 model live in a model folder (Wan's own layout, or diffusers')."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError

# (what, Wan layout name, diffusers layout name)
PARTS = (
    ("dit", "diffusion_pytorch_model*.safetensors", "transformer"),
    ("vae", "Wan2.1_VAE.pth", "vae"),
    ("text_encoder", "models_t5_umt5-xxl-enc-bf16.pth", "text_encoder"),
    ("tokenizer", "google/umt5-xxl", "tokenizer"),
)


@dataclass(frozen=True)
class ModelFiles:
    dit: Path | None
    vae: Path | None
    text_encoder: Path | None
    tokenizer: Path | None


def find_model_files(model_dir: str | os.PathLike, need: tuple[str, ...] = ("dit", "vae", "text_encoder", "tokenizer")) -> ModelFiles:
    """Locate each part; a clear error lists every needed part that is missing and the names looked for."""
    root = Path(model_dir)
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"model folder {root} is a file; --model-dir names the folder that holds it")
    if not root.is_dir():
        raise CheckpointError(f"model folder {root} does not exist")
    found, missing = {}, []
    for name, wan_name, diffusers_name in PARTS:
        if name == "dit":
            hit = root if any(root.glob(wan_name)) else None
        else:
            hit = root / wan_name if (root / wan_name).exists() else None
        if hit is None and (root / diffusers_name).is_dir():
            hit = root / diffusers_name
        found[name] = hit
        if hit is None and name in need:
            missing.append(f"{name} ({wan_name} or {diffusers_name}/)")
    if missing:
        raise CheckpointError(f"{root} is missing: " + "; ".join(missing))
    return ModelFiles(**found)


def load_folder_dit(model_dir: str | os.PathLike, checkpoint: str | os.PathLike | None, dtype, device, need: tuple[str, ...] = ()):
    """The DiT of a model folder, or ``checkpoint`` (e.g. a Self-Forcing .pt) with the folder's config; also returns
    the folder's files, checked to hold the parts in ``need``."""
    from .checkpoint import load_dit, read_config

    if checkpoint is not None and Path(checkpoint).is_dir():
        raise CheckpointError(f"checkpoint {checkpoint} is a folder; name the weights file in it (.pt, .pth or .safetensors)")
    files = find_model_files(model_dir, need if checkpoint else ("dit",) + need)
    if checkpoint is not None:
        base = read_config(files.dit) if files.dit is not None else None
        return load_dit(checkpoint, dtype=dtype, device=device, config=base), files
    return load_dit(files.dit, dtype=dtype, device=device), files


def load_folder_parts(model_dir, checkpoint, dtype, device, text_encoder: bool, tae_path=None):
    """(DiT, decoder, text encoder or None) of a Wan2.1 folder: the folder's Wan VAE, or TAEHV from ``tae_path`` (read
    first, so a bad path fails before the DiT loads); UMT5 and its tokenizer when ``text_encoder``. The decoder runs in
    float32 on a CPU."""
    from .taehv_checkpoint import load_taehv
    from .text_encoder import load_text_encoder
    from .vae_checkpoint import load_vae

    need = ("text_encoder", "tokenizer") if text_encoder else ()
    need = need + ("vae",) if tae_path is None else need
    vae_dtype = torch.float32 if torch.device(device).type == "cpu" else dtype
    decoder = load_taehv(tae_path, dtype=vae_dtype, device=device) if tae_path is not None else None
    dit, files = load_folder_dit(model_dir, checkpoint, dtype, device, need)
    decoder = decoder or load_vae(files.vae, dtype=vae_dtype, device=device)
    encoder = load_text_encoder(files.text_encoder, files.tokenizer, dtype=dtype, device=device) if text_encoder else None
    return dit, decoder, encoder
