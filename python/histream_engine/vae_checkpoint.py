"""Load and save the Wan2.1 VAE: ``Wan2.1_VAE.pth`` (Wan keys) or a diffusers ``AutoencoderKLWan`` folder.
``load_vae`` also recognises TAEHV's ``taew2_1.pth`` / ``taew2_1.safetensors`` by their keys (``taehv_checkpoint``).

By default only the decoder (and the post-quant conv) is loaded and encoder tensors are skipped; the
encoder is loaded when asked for (``encoder=True``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint import CheckpointError, _read_json, _read_pickle, _read_safetensors, _read_safetensors_dir, check_keys
from .model.dit import check_dtype
from .model.taehv import TAEHV
from .model.vae import VAEConfig, WanVAE
from .model.vae_keys import diffusers_to_wan_vae, wan_to_diffusers_vae
from .taehv_checkpoint import is_taehv_state, taehv_from_state

VAE_FORMATS = ("wan", "diffusers")


def _wanted(key: str, encoder: bool) -> bool:
    return key.startswith(("decoder.", "conv2.")) or (encoder and key.startswith(("encoder.", "conv1.")))


def _config_from_diffusers(raw: dict) -> VAEConfig:
    if raw.get("is_residual") or raw.get("patch_size"):
        raise CheckpointError("this is a Wan2.2-style VAE (residual / patchified); histream_engine decodes Wan2.1 latents")
    kwargs = dict(
        dim=raw.get("base_dim", 96),
        z_dim=raw.get("z_dim", 16),
        dim_mult=tuple(raw.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=raw.get("num_res_blocks", 2),
        temporal_downsample=tuple(raw.get("temperal_downsample", (False, True, True))),
    )
    if "latents_mean" in raw:
        kwargs.update(latents_mean=tuple(raw["latents_mean"]), latents_std=tuple(raw["latents_std"]))
    return VAEConfig(**kwargs)


def _diffusers_config(cfg: VAEConfig) -> dict:
    return {
        "_class_name": "AutoencoderKLWan",
        "base_dim": cfg.dim,
        "z_dim": cfg.z_dim,
        "dim_mult": list(cfg.dim_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "temperal_downsample": list(cfg.temporal_downsample),
        "latents_mean": list(cfg.latents_mean),
        "latents_std": list(cfg.latents_std),
    }


def load_vae(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: VAEConfig | None = None,
    encoder: bool = False,
) -> WanVAE | TAEHV:
    """The VAE from ``Wan2.1_VAE.pth`` or a diffusers folder (``vae/`` or its parent); decoder only unless ``encoder``.
    A TAEHV file (``taew2_1.pth`` or ``.safetensors``) gives TAEHV (with its own encoder when ``encoder``)."""
    check_dtype(dtype)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"VAE checkpoint {path} does not exist")
    if path.is_dir():
        if (path / "vae").is_dir():
            path = path / "vae"
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} is not a diffusers VAE folder: config.json is missing")
        config = config or _config_from_diffusers(_read_json(path / "config.json"))
        state = {k: v for k, v in diffusers_to_wan_vae(_read_safetensors_dir(path), config.num_res_blocks).items() if _wanted(k, encoder)}
    elif path.suffix in (".pth", ".pt", ".safetensors"):
        state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path)
        if is_taehv_state(state):
            return taehv_from_state(state, path, dtype, device, encoder)
        state = {k: v for k, v in state.items() if _wanted(k, encoder)}
        if "decoder.head.2.weight" in state and config is None:
            config = VAEConfig(dim=state["decoder.head.2.weight"].shape[1], z_dim=state["conv2.weight"].shape[0])
    else:
        raise CheckpointError(f"unrecognised VAE checkpoint {path}: expected Wan2.1_VAE.pth, a diffusers folder or taew2_1.pth / .safetensors")
    if encoder and not any(k.startswith("encoder.") for k in state):
        raise CheckpointError(f"{path} holds no VAE encoder (no encoder.* tensors): use the full Wan2.1_VAE.pth or "
                              "diffusers vae/ folder, or load it without encoder=True (decoding needs none)")
    config = config or VAEConfig()
    with torch.device("meta"):
        model = WanVAE(config, with_encoder=encoder)
    check_keys(model, state, path, "VAE")
    model.load_state_dict(state, strict=True, assign=True)
    # the latent statistics are buffers made at construction (on meta): rebuild them for real
    model.latents_mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    model.latents_std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def save_vae(model: WanVAE, path: str | os.PathLike, format: str = "wan") -> Path:
    """``wan``: a ``.pth`` state dict with Wan keys; ``diffusers``: a folder (the tensors the model holds)."""
    if format not in VAE_FORMATS:
        raise ValueError(f"unknown VAE format {format!r}; use one of {VAE_FORMATS}")
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if format == "wan":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, str(path))
        return path
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(_diffusers_config(model.config), indent=2))
    save_file(wan_to_diffusers_vae(state, model.config.num_res_blocks), str(path / "diffusion_pytorch_model.safetensors"))
    return path
