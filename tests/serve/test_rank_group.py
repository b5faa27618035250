"""serve.ray.rank_group.GroupStream's bookkeeping without Ray: a rank that raises while rank 0 goes on has the group broken
up at once (rank 0's collective then fails) and the stream fails naming that rank; an error every rank raises alike is
rank 0's own and keeps the group; a rank that ends otherwise than rank 0 gets the group rebuilt. (The real thing, a
killed rank actor, is in test_ray_parallel.py.)"""

import threading

import pytest

pytest.importorskip("ray")

from histream_engine.runtime.denoise.finite_check import NonFiniteLatents  # noqa: E402
from histream_engine.serve.ray import rank_group  # noqa: E402
from histream_engine.serve.ray.rank_group import GroupStream, RankEnd, RankLost  # noqa: E402
from histream_engine.serve.session import WorkerLost  # noqa: E402


class Group:
    """Rank 0's view of a 2-rank group whose rank 1 ended its stream call as ``end`` says."""

    world, timeout_s, actors = 2, 5.0, []

    def __init__(self, end: RankEnd):
        self.end, self.broken, self.broken_up = end, None, threading.Event()

    def ends(self, refs, wait_s):
        yield self.end

    def lost_rank(self, refs, wait_s):
        return self.end if self.end.died else None

    def break_up(self, why):
        self.broken = why
        self.broken_up.set()


def rank0(group: Group, error: Exception | None):
    """Rank 0's stream: chunk 0, then chunk 1's collective, which fails once the group is broken up (as gloo's does when
    the other ranks' processes go), or ``error`` raised by rank 0 itself at chunk 1."""
    yield "chunk 0"
    if error is not None:
        raise error
    assert group.broken_up.wait(10), "the group was never broken up: rank 0 would wait for the collective's timeout"
    raise RuntimeError("Connection closed by peer")


@pytest.fixture(autouse=True)
def short_settle(monkeypatch):
    monkeypatch.setattr(rank_group, "SETTLE_S", 0.2)


def test_a_rank_that_raises_alone_breaks_the_group_up_and_fails_the_stream_naming_it():
    group = Group(RankEnd(1, MemoryError("CUDA out of memory (rank 1's GPU)"), died=False))
    stream = GroupStream(group, "key", ["ref"], lambda: rank0(group, None))
    assert next(stream) == "chunk 0"
    with pytest.raises(RankLost) as failed:
        next(stream)
    stream.close()
    assert str(failed.value) == ("rank 1 of this replica's 2 ranks failed alone mid-stream (MemoryError: CUDA out of memory "
                                 "(rank 1's GPU)); the replica rebuilds its group")
    assert group.broken == "rank 1 failed alone"
    assert isinstance(failed.value, WorkerLost)  # the session's retry="lost": the registry resumes it on the new group


def test_an_error_every_rank_raises_is_rank_0s_own_and_keeps_the_group():
    nan = "chunk 1: the latents hold NaN or Inf values after step 4/4"
    group = Group(RankEnd(1, NonFiniteLatents(nan), died=False))
    stream = GroupStream(group, "key", ["ref"], lambda: rank0(group, NonFiniteLatents(nan)))
    next(stream)
    with pytest.raises(NonFiniteLatents, match="chunk 1: the latents"):
        next(stream)
    stream.close()
    assert group.broken is None and not group.broken_up.is_set()


def test_a_rank_that_ended_otherwise_than_rank_0_gets_the_group_rebuilt():
    group = Group(RankEnd(1, None, died=False))  # rank 1 ran to the end; rank 0 failed alone (its decoder, say)
    stream = GroupStream(group, "key", ["ref"], lambda: rank0(group, MemoryError("out of memory decoding chunk 1")))
    next(stream)
    with pytest.raises(MemoryError):
        next(stream)
    stream.close()
    assert group.broken == "rank 1 ended the stream otherwise than rank 0"


def test_a_rank_whose_actor_died_fails_the_stream_naming_it():
    died = RankEnd(1, RuntimeError("The actor died unexpectedly before finishing this task."), died=True)
    group = Group(died)
    stream = GroupStream(group, "key", ["ref"], lambda: rank0(group, None))
    next(stream)
    with pytest.raises(RankLost, match=r"^rank 1 of this replica's 2 ranks was lost mid-stream \(RuntimeError: The actor"):
        next(stream)
    assert group.broken == "rank 1 was lost"
