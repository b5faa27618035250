"""Property-based: any schedule dict is either refused with a ValueError naming what is wrong, or a schedule the
engine runs (its first chunk, on the tiny model without a VAE) to finite latents. Never another exception type."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from histream_engine.runtime import Engine
from histream_engine.runtime.denoise.schedules import Schedule

steps = st.lists(st.tuples(st.sampled_from(["low", "high", "mid"]),
                           st.one_of(st.floats(-10, 1100), st.just(float("nan")), st.integers(-5, 1005), st.text(max_size=4))),
                 min_size=0, max_size=4) | st.sampled_from([[["high", 1000.0]], [["low", 1000], ["high", 500]], [["high", 900], ["high", 400]]])
fields = {
    "name": st.text(max_size=8),
    "first": steps,
    "later": steps,
    "window": st.sampled_from(["full", "anchor", "ring", 1]),
    "anchor_frames": st.one_of(st.integers(-1, 3), st.sampled_from(["1", True, 1.0])),
    "positions": st.sampled_from(["absolute", "window", "relative"]),
    "ntk": st.one_of(st.booleans(), st.sampled_from(["yes", 1, None])),
    "low_factor": st.one_of(st.integers(0, 4), st.sampled_from([2.0, "2", False])),
    "upsample": st.sampled_from(["nearest", "bilinear", "bicubic", "area"]),
    "steps": st.integers(),
}
schedule_dicts = st.fixed_dictionaries({"first": steps, "later": steps},
                                       optional={k: v for k, v in fields.items() if k not in ("first", "later")})


@pytest.fixture(scope="module")
def engine(tiny_host):
    return Engine(tiny_host.engine.dit)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule_dicts)
def test_any_schedule_dict_is_a_clear_error_or_a_valid_run(engine, tiny_host, data):
    try:
        sched = Schedule.from_dict(data)
    except ValueError as exc:
        assert "invalid schedule" in str(exc)
        return
    assert isinstance(sched.ntk, bool) and isinstance(sched.low_factor, int) and not isinstance(sched.low_factor, bool)
    side = 16 * sched.low_factor if sched.uses_low else 16
    try:
        chunk = next(engine.stream(tiny_host.default_prompt[:, :8], 9, side, side, schedule=sched))
    except ValueError as exc:  # the request checks (RoPE positions, sizes) may refuse it, clearly
        assert str(exc)
        return
    assert torch.isfinite(chunk.latents).all()


def test_ntk_yes_is_refused():
    with pytest.raises(ValueError, match="ntk must be true or false, got 'yes'"):
        Schedule.from_dict({"first": [["high", 1000]], "later": [["high", 1000]], "ntk": "yes"})
