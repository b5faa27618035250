"""The UMT5-XXL text encoder through ``transformers``, from Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` or an
HF folder, and precomputed prompt embeddings.

Output follows Wan: 512 token rows, the encoder's output for the real tokens, zero rows after them
(Wan cuts each prompt to its length and zero-pads back). ``transformers`` is imported only when an
encoder is loaded.
"""

from __future__ import annotations

import gc
import os
import re
from pathlib import Path

import torch

from .checkpoint import CheckpointError, _read_pickle, _read_safetensors
from .optional import require

TEXT_LEN = 512

# Wan T5 encoder name -> transformers UMT5EncoderModel name (inside ``blocks.N.``).
_BLOCK = (
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
)


def wan_t5_to_transformers(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := re.match(r"blocks\.(\d+)\.(.*)$", key)) and (new := dict(_BLOCK).get(m[2])):
            out[f"encoder.block.{m[1]}.{new}"] = value
        else:
            raise CheckpointError(f"unexpected key {key!r} in a Wan T5 encoder checkpoint")
    return out


def transformers_to_wan_t5(state: dict) -> dict:
    """The inverse rename (used to write Wan-format fixtures and conversions)."""
    back = {v: k for k, v in _BLOCK}
    out = {}
    for key, value in state.items():
        if key == "shared.weight":
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif m := re.match(r"encoder\.block\.(\d+)\.(.*)$", key):
            out[f"blocks.{m[1]}.{back[m[2]]}"] = value
    return out


def _umt5_config_from_wan(state: dict):
    UMT5Config = require("transformers", "text", "the text encoder", "UMT5Config")
    vocab, dim = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    return UMT5Config(
        vocab_size=vocab,
        d_model=dim,
        d_kv=state["blocks.0.attn.q.weight"].shape[0] // heads,
        d_ff=state["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
    )


class TextEncoder:
    def __init__(self, model, tokenizer, text_len: int = TEXT_LEN):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids and attention mask ``[B, L]`` -> embeddings ``[B, L, dim]`` with rows past each length zero."""
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        return out * mask.to(out.device, out.dtype)[..., None]

    def encode(self, texts: str | list[str]) -> torch.Tensor:
        """Prompts -> ``[B, 512, dim]`` embeddings, as the DiT was trained on."""
        if self.tokenizer is None:
            raise RuntimeError("this text encoder has no tokenizer; pass tokenizer_path to load_text_encoder")
        texts = [texts] if isinstance(texts, str) else list(texts)
        batch = self.tokenizer(
            [" ".join(t.split()) for t in texts], padding="max_length", max_length=self.text_len,
            truncation=True, add_special_tokens=True, return_tensors="pt",
        )
        return self.encode_ids(batch["input_ids"], batch["attention_mask"])

    def free(self) -> None:
        """Drop the weights (11 GB in bf16 for UMT5-XXL) once prompts are encoded."""
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_text_encoder(
    path: str | os.PathLike,
    tokenizer_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> TextEncoder:
    """UMT5 encoder from Wan's ``.pth`` or an HF ``UMT5EncoderModel`` folder; tokenizer from a local folder."""
    AutoTokenizer, UMT5EncoderModel = require("transformers", "text", "the text encoder", "AutoTokenizer", "UMT5EncoderModel")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"text encoder {path} does not exist")
    if path.is_dir():
        try:
            model = UMT5EncoderModel.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a UMT5EncoderModel folder: {exc}") from exc
    else:
        state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path)
        if "token_embedding.weight" not in state:
            raise CheckpointError(f"{path} is not a Wan T5 encoder checkpoint (no token_embedding.weight)")
        with torch.device("meta"):
            model = UMT5EncoderModel(_umt5_config_from_wan(state))
        renamed = wan_t5_to_transformers(state)
        missing = sorted(set(model.state_dict()) - set(renamed))
        if missing:
            raise CheckpointError(f"{path} lacks {len(missing)} encoder tensors, e.g. {missing[:5]}")
        model.load_state_dict(renamed, strict=True, assign=True)
        model.tie_weights()
        model = model.to(dtype)
    tokenizer = None
    if tokenizer_path is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load a tokenizer from {tokenizer_path}: {exc}") from exc
    return TextEncoder(model.to(device), tokenizer)


def load_prompt_embeds(path: str | os.PathLike, text_dim: int | None = None) -> torch.Tensor:
    """Precomputed embeddings (``.safetensors`` with one tensor, or ``.pt``) -> ``[B, L, dim]``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"prompt embeddings file {path} does not exist")
    if path.suffix == ".safetensors":
        tensors = list(_read_safetensors(path).values())
    elif path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or unsafe pickles raise many types
            raise CheckpointError(f"cannot read prompt embeddings {path} ({type(exc).__name__}: {exc})") from exc
        tensors = [obj] if isinstance(obj, torch.Tensor) else [v for v in (obj.values() if isinstance(obj, dict) else []) if isinstance(v, torch.Tensor)]
    else:
        raise CheckpointError(f"prompt embeddings must be .safetensors or .pt, got {path}")
    if len(tensors) != 1:
        raise CheckpointError(f"{path} must hold exactly one tensor of prompt embeddings, found {len(tensors)}")
    emb = tensors[0]
    if emb.is_complex() or not emb.is_floating_point():  # .float() would drop an imaginary part, or invent a scale
        raise CheckpointError(f"{path} holds {emb.dtype} prompt embeddings; they must be real floating (float32, bfloat16, float16)")
    emb = emb.unsqueeze(0) if emb.dim() == 2 else emb
    if emb.dim() != 3 or (text_dim is not None and emb.shape[-1] != text_dim):
        want = f"[L, {text_dim}] or [B, L, {text_dim}]" if text_dim else "[L, dim] or [B, L, dim]"
        raise CheckpointError(f"{path} holds a tensor of shape {tuple(emb.shape)}; expected {want}")
    return emb.float()
