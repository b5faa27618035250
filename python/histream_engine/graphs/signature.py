"""Fixed-shape DiT forwards for exported graphs (ONNX, TensorRT): their signatures and which ones a schedule needs
(``manifest`` maps each signature to its file).

One cached forward of a chunk is a fixed-shape function once its *signature* is fixed: the token grid (resolution),
the query frames M, the visible window frames (the chunk included), the batch, the dtype, and whether it has the
output head (a denoising step) or only writes K/V (the t=0 recache). A sliding-window schedule needs a handful of
them (the first chunks see fewer frames); a full-cache one needs one more per chunk.

Graph inputs and outputs (``GRAPH_INPUTS``/``GRAPH_OUTPUTS``): the chunk's patch vectors, the timesteps' sinusoid,
every layer's text K/V (padded to the model's text length, with a logit bias), the window's other frames' K/V
(un-rotated, gathered from the ring), the RoPE cos/sin of the visible positions in window order (real-valued, so
NTK and ``window`` positions stay inputs); out come the flow (with the head) and the chunk's K/V per layer,
un-rotated, for the runtime to write into the ring.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..config import WanConfig
from ..runtime.denoise.schedules import RESOLUTIONS, Schedule

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
GRAPH_INPUTS = ("patches", "time_sinusoid", "cross_k", "cross_v", "cross_bias", "window_k", "window_v", "rope_cos", "rope_sin")
GRAPH_OUTPUTS = ("flow", "chunk_k", "chunk_v")


@dataclass(frozen=True, order=True)
class Signature:
    resolution: str  # "high" or "low"
    grid: tuple[int, int]  # tokens per latent frame (gh, gw)
    query_frames: int  # M
    window_frames: int  # visible frames, the chunk's own included
    batch: int
    dtype: str  # float32, bfloat16, float16
    head: bool  # a denoising step (flow out), or a t=0 recache (K/V only)

    @property
    def name(self) -> str:
        kind = "step" if self.head else "recache"
        return f"{kind}-{self.resolution}-{self.grid[0]}x{self.grid[1]}-m{self.query_frames}-w{self.window_frames}-b{self.batch}-{self.dtype}"

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def shapes(self, cfg: WanConfig) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """Input and output shapes (``window_k``/``window_v`` only when the window holds more than the chunk)."""
        B, M, S = self.batch, self.query_frames, self.tokens_per_frame
        L, H, D, T = cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.text_len
        pt, ph, pw = cfg.patch_size
        ctx = (self.window_frames - M) * S
        inputs = {
            "patches": [B, M, *self.grid, cfg.in_dim * pt * ph * pw],
            "time_sinusoid": [B, M, cfg.freq_dim],
            "cross_k": [L, B, T, H, D],
            "cross_v": [L, B, T, H, D],
            "cross_bias": [B, 1, 1, T],
            "window_k": [L, B, ctx, H, D],
            "window_v": [L, B, ctx, H, D],
            "rope_cos": [self.window_frames * S, D // 2],
            "rope_sin": [self.window_frames * S, D // 2],
        }
        if not ctx:
            del inputs["window_k"], inputs["window_v"]
        outputs = {"chunk_k": [L, B, M * S, H, D], "chunk_v": [L, B, M * S, H, D]}
        if self.head:
            outputs = {"flow": [B, cfg.out_dim, M * pt, self.grid[0] * ph, self.grid[1] * pw], **outputs}
        return inputs, outputs

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Signature":
        return cls(**{**d, "grid": tuple(d["grid"])})


def resolution_grid(cfg: WanConfig, latent_hw: tuple[int, int], resolution: str, sched: Schedule) -> tuple[int, int]:
    factor = sched.low_factor if resolution == "low" else 1
    return latent_hw[0] // factor // cfg.patch_size[1], latent_hw[1] // factor // cfg.patch_size[2]


def needed_signatures(cfg: WanConfig, sched: Schedule, chunk_size: int, latent_frames: int, latent_hw: tuple[int, int],
                      batch: int, dtype: torch.dtype) -> list[Signature]:
    """Every signature a video of this shape runs, in a stable order."""
    plan = sched.window_plan(chunk_size, latent_frames)
    used = [r for r in RESOLUTIONS if r == "high" or sched.uses_low]
    found = set()
    for c in range(latent_frames // chunk_size):
        nv = len(plan.visible_frames(c))
        kinds = {(s.resolution, True) for s in sched.steps(c)} | {(r, False) for r in used}
        for res, head in kinds:
            found.add(Signature(res, resolution_grid(cfg, latent_hw, res, sched), chunk_size, nv, batch, DTYPE_NAMES[dtype], head))
    return sorted(found)
