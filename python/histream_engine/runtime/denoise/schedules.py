"""Sampling schedules as data: per chunk kind (first, later), a list of (resolution, timestep) steps.

A schedule never branches the runtime: the runtime reads the steps and the window setting.
"""

from __future__ import annotations

import json
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .sampling import NUM_TRAIN_TIMESTEPS, warp_timesteps

from ..cache.window import POSITION_MODES, WindowPlan
from ..request_checks import RequestError

RESOLUTIONS = ("low", "high")
# "full": every earlier latent frame stays attended (Self-Forcing); "anchor": anchor + M-1 previous frames (AGSW).
WINDOWS = ("full", "anchor")
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Step:
    resolution: str  # which token grid this forward runs at
    timestep: float  # warped timestep in (0, 1000]; sigma = timestep / 1000

    def __post_init__(self):
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"step resolution {self.resolution!r} is not one of {RESOLUTIONS}")
        if not 0 < self.timestep <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"step timestep {self.timestep} is outside (0, {NUM_TRAIN_TIMESTEPS}]")


@dataclass(frozen=True)
class Schedule:
    name: str
    first: tuple[Step, ...]  # steps of chunk 0
    later: tuple[Step, ...]  # steps of every later chunk
    window: str = "full"
    anchor_frames: int = 1  # frames kept as the attention sink in "anchor" windows
    positions: str = "absolute"  # temporal RoPE index: "absolute" frame index, or "window" (re-indexed, unbounded streams)
    ntk: bool = False  # NTK-aware RoPE scaling for grids beyond the training grid, per axis and per resolution
    low_factor: int = 2  # low resolution = high / low_factor per side
    upsample: str = "bilinear"  # latent-space upsampling of the low-res x0 before the high-res steps
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.first or not self.later:
            raise ValueError(f"schedule {self.name!r} needs at least one step for the first and for later chunks")
        for value, allowed, what in (
            (self.window, WINDOWS, "window"),
            (self.positions, POSITION_MODES, "positions"),
            (self.upsample, UPSAMPLE_MODES, "upsample"),
        ):
            if value not in allowed:
                raise ValueError(f"schedule {self.name!r}: {what} {value!r} is not one of {allowed}")
        for name, kind in (("ntk", bool), ("anchor_frames", int), ("low_factor", int)):
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"schedule {self.name!r}: {name} must be {'true or false' if kind is bool else 'an integer'}, got {value!r}")
        if self.anchor_frames < 0 or self.low_factor < 1:
            raise ValueError(f"schedule {self.name!r}: anchor_frames must be >= 0 and low_factor >= 1")
        for kind in (self.first, self.later):
            ts = [s.timestep for s in kind]
            if any(a <= b for a, b in zip(ts, ts[1:])):
                raise ValueError(f"schedule {self.name!r}: timesteps must strictly decrease, got {ts}")
            res = [s.resolution for s in kind]
            if res[-1] != "high" or res != sorted(res, key=RESOLUTIONS.index):
                raise ValueError(f"schedule {self.name!r}: low-res steps must come first and the last step be high-res, got {res}")

    @property
    def uses_low(self) -> bool:
        """Whether a low-res cache is kept (and recached after every chunk)."""
        return any(s.resolution == "low" for s in self.first + self.later)

    def window_plan(self, chunk_size: int, latent_frames: int) -> WindowPlan:
        """The cache layout this schedule's window implies for a video of ``latent_frames``."""
        anchor = self.window == "anchor"
        return WindowPlan(
            chunk_size=chunk_size,
            anchor_frames=self.anchor_frames if anchor else 0,
            history_frames=chunk_size - 1 if anchor else None,
            total_frames=latent_frames,
            positions=self.positions,
        )

    def steps(self, chunk_index: int) -> tuple[Step, ...]:
        return self.first if chunk_index == 0 else self.later

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        """Build from ``{"name", "first": [[res, t], ...], "later": [...], "window"}`` (timesteps already warped)."""
        try:
            steps = {kind: tuple(Step(str(r), float(t)) for r, t in data[kind]) for kind in ("first", "later")}
            options = {k: data[k] for k in _OPTIONS if k in data}
            unknown = set(data) - set(_OPTIONS) - {"name", "first", "later", "description"}
            if unknown:
                raise ValueError(f"unknown schedule fields {sorted(unknown)}")
            return cls(name=str(data.get("name", "custom")), **steps, **options)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"invalid schedule {_excerpt(data)}: {exc}. Expected {{'name': ..., 'first': [[resolution, timestep], ...], "
                f"'later': [...]}} plus any of {list(_OPTIONS)}"
            ) from exc

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "first": [[s.resolution, s.timestep] for s in self.first],
            "later": [[s.resolution, s.timestep] for s in self.later],
            **{k: getattr(self, k) for k in _OPTIONS},
        }

    def replace(self, **changes) -> "Schedule":
        return dataclasses.replace(self, **changes)


def _excerpt(data, limit: int = 200) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


_OPTIONS = ("window", "anchor_frames", "positions", "ntk", "low_factor", "upsample")


def _steps(resolutions: str, raw_steps, shift: float = 5.0) -> tuple[Step, ...]:
    return tuple(Step(r, t) for r, t in zip(resolutions.split(), warp_timesteps(raw_steps, shift)))


FOUR_STEPS = [1000, 750, 500, 250]  # warped: 1000, 937.5, 833.3, 625
TWO_STEPS = [1000, 500]  # warped: 1000, 833.3 (the paper does not print its choice; ours)

_SF = _steps("high high high high", FOUR_STEPS)
_DRC4 = _steps("low low high high", FOUR_STEPS)
_DRC2 = _steps("low high", TWO_STEPS)

SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in (
        Schedule("self_forcing", _SF, _SF, window="full", description="Self-Forcing: 4 high-res steps, full causal KV cache"),
        Schedule("histream", _DRC4, _DRC4, window="anchor", ntk=True, description="HiStream: dual-resolution caching + anchor-guided sliding window"),
        Schedule("histream_plus", _DRC4, _DRC2, window="anchor", ntk=True, description="HiStream+: HiStream with 2 steps (1 low + 1 high) after the first chunk"),
        Schedule("no_drc", _SF, _SF, window="anchor", ntk=True, description="ablation: sliding window, all steps at high res"),
        Schedule("no_agsw", _DRC4, _DRC4, window="full", ntk=True, description="ablation: dual-resolution caching, full KV history"),
        Schedule("two_step", _DRC2, _DRC2, window="anchor", ntk=True, description="ablation: 1 low + 1 high step for every chunk"),
    )
}


def resolve_schedule(schedule: "str | dict | Schedule | Path") -> Schedule:
    """A preset name, a dict, a path to a JSON file, or a Schedule."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, dict):
        return Schedule.from_dict(schedule)
    if isinstance(schedule, Path) or (isinstance(schedule, str) and schedule.endswith(".json")):
        try:
            return Schedule.from_dict(json.loads(Path(schedule).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read schedule file {schedule}: {exc}") from exc
    if schedule in SCHEDULES:
        return SCHEDULES[schedule]
    raise RequestError(f"unknown schedule {schedule!r}; presets: {sorted(SCHEDULES)}, or a schedule's .json file", param="schedule",
                       python_hint=" (or a dict, or a Schedule)")
