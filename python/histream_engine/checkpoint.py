"""Load and save the Wan DiT in the three checkpoint formats users have.

- ``wan``: Wan original, ``diffusion_pytorch_model*.safetensors`` (+ ``config.json``), or one ``.safetensors`` file.
- ``self_forcing``: a ``.pt`` dict with ``generator_ema`` (preferred) or ``generator``, keys prefixed ``model.``
  and possibly wrapped by FSDP / activation checkpointing / torch.compile.
- ``diffusers``: a ``transformer`` directory (``config.json`` + safetensors, sharded or not), or its parent.

Config comes from an explicit argument, else a config.json, else the tensor shapes.
Pickles are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import WanConfig
from .model.dit import WanDiT, check_dtype
from .model.keys import diffusers_to_wan, strip_wrappers, wan_to_diffusers

FORMATS = ("wan", "diffusers", "self_forcing")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# Real Wan models use 128-channel heads; the head count is not visible in tensor shapes.
WAN_HEAD_DIM = 128


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message says what is wrong and what to do."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}. The file must be a JSON model config.") from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-download or re-convert it.") from exc


def _read_safetensors_dir(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / INDEX_NAME
    if index.exists():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
        if not files:
            raise CheckpointError(f"{index} has an empty weight_map")
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no .safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        shard = folder / name
        if not shard.exists():
            raise CheckpointError(f"shard {name} listed in {index} is missing from {folder}")
        state.update(_read_safetensors(shard))
    return state


def looks_like_pytorch(path: Path) -> bool:
    """Whether ``path`` begins as torch.save writes: a zip archive (torch >= 1.6) or a pickle (older files). Read
    before unpickling, so that a file of another kind gets a plain answer instead of the unpickler's."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def unpickling_failure(exc: Exception) -> str:
    """torch.load's refusal in one line: its weights-only unpickler explains at length (the PyTorch 2.6 default, a
    link, a request to file an issue) around the one phrase that says what it met."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|$)", str(exc), re.S)
    detail = found[1] if found else str(exc)
    return f"{type(exc).__name__}: {' '.join(detail.split())}"


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    if not looks_like_pytorch(path):
        raise CheckpointError(f"cannot load {path} as a weights-only PyTorch checkpoint: it is neither a zip archive nor a "
                              "pickle, as torch.save writes. The file is corrupt, or not a checkpoint (nor named .safetensors)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pickle-protocol notice: the error below says what went wrong
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # torch raises several unrelated types for corrupt or unsafe pickles
        raise CheckpointError(
            f"cannot load {path} as a weights-only PyTorch checkpoint ({unpickling_failure(exc)}). "
            "The file is corrupt, or holds objects other than tensors; only plain state dicts are loaded."
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    for name in ("generator_ema", "generator"):
        if name in obj:
            obj = obj[name]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path} has no tensors; expected a state dict or a Self-Forcing dict with 'generator_ema' or "
            f"'generator' (top-level keys: {sorted(obj)[:10]})"
        )
    return tensors


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper and ``model.`` prefixes; map diffusers names to Wan's."""
    state = {strip_wrappers(k): v for k, v in state.items()}
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items()}
    if any(k.startswith("condition_embedder.") or k == "proj_out.weight" for k in state):
        state = diffusers_to_wan(state)
    return state


def infer_config(state: dict[str, torch.Tensor]) -> WanConfig:
    """A config from tensor shapes alone; the head count assumes Wan's 128-channel heads."""
    try:
        pe = state["patch_embedding.weight"]  # [dim, in, pt, ph, pw]
        dim = pe.shape[0]
        num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        patch = tuple(pe.shape[2:])
        vol = patch[0] * patch[1] * patch[2]
        if dim % WAN_HEAD_DIM:
            raise CheckpointError(
                f"cannot infer the head count of a dim-{dim} model from its tensors (real Wan models use "
                f"{WAN_HEAD_DIM}-channel heads); pass config=WanConfig(...) or a preset name to load_dit"
            )
        return WanConfig(
            dim=dim,
            ffn_dim=state["blocks.0.ffn.0.weight"].shape[0],
            num_heads=dim // WAN_HEAD_DIM,
            num_layers=num_layers,
            in_dim=pe.shape[1],
            out_dim=state["head.head.weight"].shape[0] // vol,
            patch_size=patch,
            freq_dim=state["time_embedding.0.weight"].shape[1],
            text_dim=state["text_embedding.0.weight"].shape[1],
            qk_norm="blocks.0.self_attn.norm_q.weight" in state,
            cross_attn_norm="blocks.0.norm3.weight" in state,
        )
    except (KeyError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot infer a Wan config from these tensors (missing {exc}); pass config=") from exc


def read_config(path: str | os.PathLike) -> WanConfig | None:
    """The DiT config in ``path`` (a folder) or beside it (a file), if there is one."""
    return _config_near(Path(path))


def _config_near(path: Path) -> WanConfig | None:
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        return None
    raw = _read_json(cfg_path)
    try:
        if raw.get("_class_name") == "WanTransformer3DModel" or "num_attention_heads" in raw:
            return WanConfig.from_diffusers_json(raw)
        if "dim" in raw and "num_heads" in raw:
            return WanConfig.from_wan_json(raw)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path} is not a valid Wan config: {exc}") from exc
    return None


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], WanConfig | None]:
    """Tensors (Wan key names) and the config found beside them, from any supported format."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if (path / "transformer").is_dir():
            path = path / "transformer"
        if not any(path.glob("*.safetensors")) and not (path / INDEX_NAME).exists():
            raise CheckpointError(
                f"{path} holds no DiT weights: expected {WEIGHTS_NAME} (or shards with {INDEX_NAME}), "
                "or a diffusers model folder with a transformer/ subfolder"
            )
        state = _read_safetensors_dir(path)
    elif path.suffix == ".safetensors":
        state = _read_safetensors(path)
    elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        state = _read_pickle(path)
    else:
        raise CheckpointError(f"unrecognised checkpoint {path}: expected a directory, .safetensors, or .pt/.pth")
    return _normalise_keys(state), _config_near(path)


def check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, what: str) -> None:
    """Every parameter present with its shape, nothing extra; the error names the keys and says what to check."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the {what} config {model.config}:\n  " + "\n  ".join(problems)
            + f"\nCheck that the checkpoint is a Wan2.1 {what} and that the config (config= or config.json) matches it."
        )


def load_dit(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    config: WanConfig | str | None = None,
) -> WanDiT:
    """Load a Wan2.1 DiT from any supported checkpoint format (see the module docstring)."""
    check_dtype(dtype)
    state, found = read_state_dict(path)
    if isinstance(config, str):
        config = WanConfig.from_name(config)
    config = config or found or infer_config(state)
    with torch.device("meta"):
        model = WanDiT(config)
    check_keys(model, state, Path(path), "text-to-video DiT")
    model.load_state_dict(state, strict=True, assign=True)
    return model.cast(dtype).to(device).eval().requires_grad_(False)


def save_dit(model: WanDiT, path: str | os.PathLike, format: str = "wan", max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` as ``wan`` (folder), ``diffusers`` (folder, optionally sharded) or ``self_forcing`` (.pt file)."""
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; use one of {FORMATS}")
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if format == "self_forcing":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"generator_ema": {f"model.{k}": v for k, v in state.items()}}, str(path))
        return path
    path.mkdir(parents=True, exist_ok=True)
    if format == "wan":
        (path / "config.json").write_text(json.dumps(model.config.to_wan_json(), indent=2))
    else:
        state = wan_to_diffusers(state)
        (path / "config.json").write_text(json.dumps(model.config.to_diffusers_json(), indent=2))
    _write_safetensors(state, path, max_shard_bytes)
    return path


def _write_safetensors(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int | None) -> None:
    if max_shard_bytes is None:
        save_file(state, str(folder / WEIGHTS_NAME))
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name))
        weight_map.update({k: name for k in shard})
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
