import pytest

from histream_engine.runtime.cache.window import WindowPlan


def agsw(M=3, anchor=1, positions="absolute"):
    return WindowPlan(chunk_size=M, anchor_frames=anchor, history_frames=M - 1, positions=positions)


def test_anchor_guided_window_frames():
    plan = agsw()
    assert plan.visible_frames(0) == [0, 1, 2]
    assert plan.visible_frames(1) == [0, 1, 2, 3, 4, 5]
    assert plan.visible_frames(2) == [0, 4, 5, 6, 7, 8]
    assert plan.visible_frames(5) == [0, 13, 14, 15, 16, 17]
    assert plan.slots == 1 + 2 * 3 - 1


def test_two_anchor_frames():
    plan = agsw(anchor=2)
    assert plan.visible_frames(3) == [0, 1, 7, 8, 9, 10, 11]
    assert plan.slots == 2 + 5


def test_full_window_keeps_everything_and_is_sized_to_the_video():
    plan = WindowPlan(chunk_size=3, anchor_frames=0, history_frames=None, total_frames=21)
    assert plan.visible_frames(6) == list(range(21))
    assert plan.slots == 21
    assert [plan.slot_of(f) for f in range(21)] == list(range(21))
    with pytest.raises(ValueError, match="total_frames"):
        WindowPlan(chunk_size=3, anchor_frames=0, history_frames=None)


def test_visible_frames_never_share_a_slot_and_storage_is_constant():
    plan = agsw()
    for c in range(1000):
        slots = [plan.slot_of(f) for f in plan.visible_frames(c)]
        assert len(set(slots)) == len(slots)
        assert max(slots) < plan.slots


def test_window_positions_stay_bounded_absolute_grow():
    window, absolute = agsw(positions="window"), agsw()
    assert max(max(window.temporal_positions(c)) for c in range(1000)) == 5
    assert window.temporal_positions(700) == [0, 1, 2, 3, 4, 5]
    assert absolute.temporal_positions(700)[-1] == 2102
    assert window.max_temporal_position(1000) == 5
    assert absolute.max_temporal_position(1000) == 2999


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4])
@pytest.mark.parametrize("anchor_frames", [0, 1, 2, 3])
@pytest.mark.parametrize("history_frames", [0, 1, 2, 5, None])
def test_every_window_fills_a_prefix_of_the_ring(chunk_size, anchor_frames, history_frames):
    """What lets every backend attend ring rows [0, Lk) with no gather (RingView.slot_positions)."""
    plan = WindowPlan(chunk_size=chunk_size, anchor_frames=anchor_frames, history_frames=history_frames,
                      total_frames=chunk_size * 12)
    for c in range(12):
        slots = [plan.slot_of(f) for f in plan.visible_frames(c)]
        assert sorted(slots) == list(range(len(slots))), (c, slots)
