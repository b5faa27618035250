"""Sampling schedules as data: per chunk kind (first, later), a list of (resolution, timestep) steps.

A schedule never branches the runtime: the runtime reads the steps and the window setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .sampling import NUM_TRAIN_TIMESTEPS, warp_timesteps

RESOLUTIONS = ("high",)
WINDOWS = ("full",)


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
    # "full": every earlier latent frame stays in the KV cache (Self-Forcing).
    window: str = "full"
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.first or not self.later:
            raise ValueError(f"schedule {self.name!r} needs at least one step for the first and for later chunks")
        if self.window not in WINDOWS:
            raise ValueError(f"schedule {self.name!r}: window {self.window!r} is not one of {WINDOWS}")
        for kind in (self.first, self.later):
            ts = [s.timestep for s in kind]
            if any(a <= b for a, b in zip(ts, ts[1:])):
                raise ValueError(f"schedule {self.name!r}: timesteps must strictly decrease, got {ts}")

    def steps(self, chunk_index: int) -> tuple[Step, ...]:
        return self.first if chunk_index == 0 else self.later

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        """Build from ``{"name", "first": [[res, t], ...], "later": [...], "window"}`` (timesteps already warped)."""
        try:
            steps = {kind: tuple(Step(str(r), float(t)) for r, t in data[kind]) for kind in ("first", "later")}
            return cls(name=str(data.get("name", "custom")), window=data.get("window", "full"), **steps)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"invalid schedule {data!r}: {exc}. Expected {{'name': ..., 'first': [[resolution, timestep], ...], "
                "'later': [...], 'window': ...}}"
            ) from exc

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "first": [[s.resolution, s.timestep] for s in self.first],
            "later": [[s.resolution, s.timestep] for s in self.later],
            "window": self.window,
        }


def _steps(resolutions: str, raw_steps, shift: float = 5.0) -> tuple[Step, ...]:
    return tuple(Step(r, t) for r, t in zip(resolutions.split(), warp_timesteps(raw_steps, shift)))


SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in (
        Schedule(
            "self_forcing",
            first=_steps("high high high high", [1000, 750, 500, 250]),
            later=_steps("high high high high", [1000, 750, 500, 250]),
            window="full",
            description="Self-Forcing: 4 high-res steps, full causal KV cache",
        ),
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
    raise ValueError(f"unknown schedule {schedule!r}; presets: {sorted(SCHEDULES)}, or pass a dict / JSON file")
