"""A requested video's shape checked against the VAE, patch, chunk and schedule constraints, and the temporal RoPE
positions its window will reach: every refusal names what was asked and what would work."""

from __future__ import annotations

from dataclasses import dataclass

from .cache.window import WindowPlan
from .denoise.schedules import Schedule
from .request_checks import RequestError
from ..model.decoder import VAE_SPACE_STRIDE, VAE_TIME_STRIDE


@dataclass(frozen=True)
class VideoShape:
    batch: int
    latent_frames: int | None  # None: unbounded
    latent_height: int  # high resolution
    latent_width: int
    num_chunks: int | None

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.latent_height, self.latent_width


def check_video_request(num_frames, height, width, chunk_size: int, sched: Schedule, patch_size=(1, 2, 2)) -> int | None:
    """Check a requested video; returns its latent frames (None for an unbounded stream, ``num_frames=None``)."""
    M = chunk_size
    if num_frames is None:
        check_unbounded(sched)
        latent_frames = None
    elif not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1 or (num_frames - 1) % VAE_TIME_STRIDE:
        raise RequestError(f"num_frames must be a positive integer of the form 4k+1 (e.g. 81), got {num_frames!r}",
                           param="num_frames", python_hint="; or None for an unbounded stream")
    else:
        latent_frames = (num_frames - 1) // VAE_TIME_STRIDE + 1
    if latent_frames is not None and latent_frames % M:
        ok = [(VAE_TIME_STRIDE * M * n - VAE_TIME_STRIDE + 1) for n in range(1, 8)]
        raise RequestError(
            f"num_frames={num_frames} gives {latent_frames} latent frames, not a multiple of the chunk size {M}; "
            f"(frames - 1) / 4 + 1 must be divisible by {M}: use e.g. {ok}", param="num_frames")
    unit = VAE_SPACE_STRIDE * max(patch_size[1:])
    if sched.uses_low:
        unit *= sched.low_factor
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % unit:
            why = f" (16 at the low resolution, which is 1/{sched.low_factor} of it)" if sched.uses_low else ""
            raise RequestError(f"{name} must be a positive multiple of {unit}{why} for schedule {sched.name!r}, got {v!r}", param=name)
    return latent_frames


def check_unbounded(sched: Schedule) -> None:
    """An unbounded stream needs constant memory and a bounded RoPE range: a sliding window with window positions."""
    if sched.window != "anchor":
        raise ValueError(f"num_frames=None (an unbounded stream) needs a sliding-window schedule; {sched.name!r} keeps the "
                         "full history (window='full'), whose cache grows without bound: use histream, histream_plus, "
                         "no_drc or two_step with positions='window'")
    if sched.positions != "window":
        raise ValueError(f"num_frames=None (an unbounded stream) needs positions='window'; {sched.name!r} uses absolute "
                         "temporal positions, which leave the model's trained RoPE range: pass "
                         f"SCHEDULES[{sched.name!r}].replace(positions='window') (or \"positions\": \"window\" in a schedule dict)")


def video_shape(batch: int, num_frames, height: int, width: int, chunk_size: int, sched: Schedule, patch_size) -> VideoShape:
    latent_frames = check_video_request(num_frames, height, width, chunk_size, sched, patch_size)
    return VideoShape(
        batch=batch,
        latent_frames=latent_frames,
        latent_height=height // VAE_SPACE_STRIDE,
        latent_width=width // VAE_SPACE_STRIDE,
        num_chunks=None if latent_frames is None else latent_frames // chunk_size,
    )


def position_horizon(plan: WindowPlan, shape: VideoShape) -> int:
    """Chunks to look at for the largest temporal position: all of a bounded video; for an unbounded stream (window
    positions, checked) enough for the window to reach its steady size."""
    return shape.num_chunks if shape.num_chunks is not None else plan.slots + 2


def check_positions(model_config, plan: WindowPlan, shape: VideoShape) -> None:
    """The temporal and spatial RoPE positions the stream reaches stay inside the model's trained positions."""
    limit = model_config.rope_max_positions
    last = plan.max_temporal_position(position_horizon(plan, shape))
    if last >= limit:
        raise ValueError(
            f"{shape.latent_frames} latent frames need temporal RoPE position {last}, past the model's {limit} trained "
            f"positions with positions={plan.positions!r}; use a schedule with positions='window' (re-indexed inside "
            "the sliding window) for long or unbounded streams"
        )
    ph, pw = model_config.patch_size[1:]
    grid = (shape.latent_height // ph, shape.latent_width // pw)
    if max(grid) > limit:
        raise ValueError(f"token grid {grid} exceeds the model's {limit} RoPE positions; lower the resolution")
