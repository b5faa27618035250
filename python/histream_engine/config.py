"""Model configuration: a plain dataclass, named presets as data, and the two on-disk config dialects."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    # Wan precomputes RoPE for 1024 positions per axis; positions beyond were never trained.
    rope_max_positions: int = 1024
    # Token grid (h, w) the model was trained on (480x832): NTK scaling is relative to it.
    train_grid: tuple[int, int] = (30, 52)

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 8:
            raise ValueError(f"head_dim {self.head_dim} must be even and at least 8 for 3D RoPE")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "train_grid", tuple(int(g) for g in self.train_grid))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    def replace(self, **changes) -> "WanConfig":
        return dataclasses.replace(self, **changes)

    # --- Wan original config.json ("_class_name": "WanModel") ---
    def to_wan_json(self) -> dict:
        return {
            "_class_name": "WanModel",
            "model_type": "t2v",
            "dim": self.dim,
            "ffn_dim": self.ffn_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "patch_size": list(self.patch_size),
            "freq_dim": self.freq_dim,
            "text_dim": self.text_dim,
            "text_len": self.text_len,
            "eps": self.eps,
            "qk_norm": self.qk_norm,
            "cross_attn_norm": self.cross_attn_norm,
            "window_size": [-1, -1],
        }

    @classmethod
    def from_wan_json(cls, cfg: dict) -> "WanConfig":
        model_type = cfg.get("model_type", "t2v")
        if model_type != "t2v":
            raise ValueError(f"model_type {model_type!r} is not supported: histream_engine runs text-to-video (t2v) Wan models")
        return cls(
            dim=cfg["dim"],
            ffn_dim=cfg["ffn_dim"],
            num_heads=cfg["num_heads"],
            num_layers=cfg["num_layers"],
            in_dim=cfg.get("in_dim", 16),
            out_dim=cfg.get("out_dim", 16),
            patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
            freq_dim=cfg.get("freq_dim", 256),
            text_dim=cfg.get("text_dim", 4096),
            text_len=cfg.get("text_len", 512),
            eps=cfg.get("eps", 1e-6),
            qk_norm=cfg.get("qk_norm", True),
            cross_attn_norm=cfg.get("cross_attn_norm", True),
        )

    # --- diffusers WanTransformer3DModel config.json ---
    def to_diffusers_json(self) -> dict:
        return {
            "_class_name": "WanTransformer3DModel",
            "patch_size": list(self.patch_size),
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.in_dim,
            "out_channels": self.out_dim,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": self.cross_attn_norm,
            "qk_norm": "rms_norm_across_heads" if self.qk_norm else None,
            "eps": self.eps,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": self.rope_max_positions,
        }

    @classmethod
    def from_diffusers_json(cls, cfg: dict) -> "WanConfig":
        if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
            raise ValueError("image-conditioned (I2V) Wan transformers are not supported: use a text-to-video checkpoint")
        heads = cfg["num_attention_heads"]
        return cls(
            dim=heads * cfg["attention_head_dim"],
            ffn_dim=cfg["ffn_dim"],
            num_heads=heads,
            num_layers=cfg["num_layers"],
            in_dim=cfg.get("in_channels", 16),
            out_dim=cfg.get("out_channels", 16),
            patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
            freq_dim=cfg.get("freq_dim", 256),
            text_dim=cfg.get("text_dim", 4096),
            eps=cfg.get("eps", 1e-6),
            qk_norm=cfg.get("qk_norm") is not None,
            cross_attn_norm=cfg.get("cross_attn_norm", True),
            rope_max_positions=cfg.get("rope_max_seq_len", 1024),
        )

    @classmethod
    def from_name(cls, name: str) -> "WanConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}") from None


PRESETS: dict[str, WanConfig] = {
    "wan2.1-1.3b": WanConfig(),
    "wan2.1-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Small enough for CPU tests and the demo; head_dim 32 keeps the 3D RoPE split non-trivial (12/10/10).
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, freq_dim=32),
    # Wan-shaped (the 1.3B's ffn/dim ratio, 64-wide heads, 4096-wide text) at a CPU's scale: the peer comparison
    "small": WanConfig(dim=384, ffn_dim=2240, num_heads=6, num_layers=4),
}
