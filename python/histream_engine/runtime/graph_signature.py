"""Fixed-shape DiT forwards for exported graphs (ONNX, TensorRT): their signatures, which ones a schedule needs, and
the manifest that maps each signature to its file.

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

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..config import WanConfig
from .schedules import RESOLUTIONS, Schedule

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
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


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter's name, shape, dtype and a few statistics: graphs bake the weights in, so a
    manifest records whose they are and the runtime refuses another model's."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        flat = p.detach().flatten()
        step = max(1, flat.numel() // 4096)  # the same elements on any device: raw bytes, no reduction order
        sample = flat[::step].contiguous().cpu().view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        h.update(repr((name, tuple(p.shape), str(p.dtype))).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Manifest:
    root: Path
    package_version: str
    fingerprint: str
    config: dict
    graphs: dict[Signature, dict]  # signature -> {"file", "inputs", "outputs", ...}
    fp8: bool = False  # Q/DQ around the blocks' linear layers (export.fp8)

    def entry(self, sig: Signature) -> dict:
        if sig not in self.graphs:
            have = "\n  ".join(s.name for s in sorted(self.graphs)) or "(none)"
            raise ValueError(f"no exported graph for signature {sig.name} ({sig}) in {self.root}; it has:\n  {have}\n"
                             "export the schedule and size you run: histream export --schedule ... --height ... --width ...")
        return self.graphs[sig]

    def check_covers(self, sigs: list[Signature]) -> None:
        for sig in sigs:
            self.entry(sig)


def write_manifest(root: Path, dit, schedule: str, entries: list[tuple[Signature, dict]], extra: dict) -> Path:
    from .. import __version__

    record = {
        "format": MANIFEST_FORMAT,
        "package_version": __version__,
        "git_commit": git_commit(),
        "weights_fingerprint": weights_fingerprint(dit),
        "config": dit.config.to_wan_json(),
        "schedule": schedule,
        **extra,
        "graphs": [{"signature": sig.to_json(), **entry} for sig, entry in entries],
    }
    path = root / MANIFEST
    path.write_text(json.dumps(record, indent=2))
    return path


def read_record(root: Path, name: str, writer: str, parse):
    """``parse(json)`` of the record ``root/name`` that ``writer`` writes; a missing or malformed one is a CheckpointError."""
    path = root / name
    if not path.is_file():
        raise CheckpointError(f"{root} has no {name}: point engine_dir at a folder written by {writer}")
    try:
        return parse(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a record written by {writer} ({type(exc).__name__}: {exc})") from exc


def read_manifest(root: str | Path, dit=None) -> Manifest:
    """The manifest of an export folder, refusing one from another package version or (given ``dit``) other weights."""
    from .. import __version__

    root = Path(root)
    path = root / MANIFEST
    record, graphs = read_record(root, MANIFEST, "histream export",
                                 lambda r: (r, {Signature.from_json(g["signature"]): g for g in r["graphs"]}))
    if record.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} has manifest format {record.get('format')}, this package reads {MANIFEST_FORMAT}")
    if record.get("package_version") != __version__:
        raise CheckpointError(f"{path} was written by histream_engine {record.get('package_version')}, this is {__version__}: "
                              "graphs are tied to the package that exported them; export again")
    if dit is not None and record.get("weights_fingerprint") != weights_fingerprint(dit):
        raise CheckpointError(f"the graphs in {root} were exported from other weights than this engine's DiT "
                              f"(fingerprint {record.get('weights_fingerprint')} vs {weights_fingerprint(dit)}): export them from this model")
    return Manifest(root, record["package_version"], record["weights_fingerprint"], record["config"], graphs, bool(record.get("fp8")))
