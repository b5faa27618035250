"""Streams that survive, at the session level (serve/session.py, serve/resilience.py) on the tiny model: a session's
per-chunk checkpoints are consistent with what it published, and a session resumed from the checkpoint at chunk k
publishes a ``resumed`` event and then exactly the frames of the uninterrupted stream with a same-prompt
``set_prompt(recache=True)`` at that boundary (JPEG bytes equal), every frame once; a stream that keeps the full
history has no checkpoint and says why; ``resumption`` refuses with the reason (no state yet, expired, too many)."""

import pytest

pytest.importorskip("PIL")
import torch  # noqa: E402

from histream_engine import host  # noqa: E402
from histream_engine.model.dit import WanDiT  # noqa: E402
from histream_engine.runtime.stream_state import stream_state_from_bytes  # noqa: E402
from histream_engine.serve import protocol  # noqa: E402
from histream_engine.serve.resilience import Checkpoint, Resilience, Resume, resumption  # noqa: E402
from histream_engine.serve.session import Session, run  # noqa: E402

FRAMES = 45  # 4 chunks: 9 + 12 + 12 + 12 frames


@pytest.fixture(scope="module")
def demo():
    return host.tiny_demo("cpu", "torch", 0)


@pytest.fixture(scope="module")
def embeds_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("embeds") / "calm.pt"
    torch.save(torch.randn(8, WanDiT("tiny").config.text_dim, generator=torch.Generator().manual_seed(1)), path)
    return str(path)


def record(schedule: str, embeds: str) -> dict:
    req = protocol.StreamRequest(frames=FRAMES, width=32, height=32, schedule=schedule, prompt_embeds="calm.pt")
    return {**protocol.plan(req, protocol.Limits()), "prompt_embeds": embeds}


def host_request(rec: dict) -> host.HostRequest:
    return host.HostRequest("", rec["prompt_embeds"], rec["frames"], rec["height"], rec["width"], rec["schedule"], rec["seed"])


class Steer:
    """Steering that, at the boundary before chunk ``at``, re-caches the same prompt (the reference), or stops there
    (a worker lost at that boundary)."""

    def __init__(self, embeds: str, recache_at: int | None = None, stop_at: int | None = None):
        self.embeds, self.recache_at, self.stop_at, self.boundaries = embeds, recache_at, stop_at, 0

    def boundary(self, stream) -> bool:
        at, self.boundaries = self.boundaries, self.boundaries + 1
        if at == self.recache_at:
            stream.set_prompt("", self.embeds, True)
        return at == self.stop_at


def events_of(session: Session, steering) -> list:
    return list(run(session, steering))


def frames_by_chunk(events) -> dict[int, list[bytes]]:
    return {e.data["index"]: e.frames for e in events if e.data["type"] == "chunk"}


def test_a_session_resumed_at_chunk_k_publishes_the_recached_streams_frames_once(demo, embeds_path, tmp_path):
    k = 2  # at boundary 1 a same-prompt re-cache re-encodes what chunk 0 cached already: no seam to see
    rec = record("histream", embeds_path)
    # the first worker: stopped at boundary k (its checkpoint there rode on chunk k-1's event)
    first = events_of(Session(lambda: demo.results(host_request(rec)), rec, tmp_path / "a"), Steer(embeds_path, stop_at=k))
    chunks = [e for e in first if e.data["type"] == "chunk"]
    assert [e.data["index"] for e in chunks] == list(range(k))
    assert all(e.checkpoint is not None and e.checkpoint.chunk == e.data["index"] + 1 for e in chunks)
    assert all(e.segment is not None and e.segment.is_file() for e in chunks)
    checkpoint = chunks[-1].checkpoint
    # the next worker goes on from that checkpoint (its bytes, as a transport keeps them)
    resume = Resume(checkpoint, 1, "replica lost (test)")
    resumed = events_of(Session(lambda: demo.resume_state(stream_state_from_bytes(checkpoint.state)), rec, tmp_path / "b",
                                resume=resume), Steer(embeds_path))
    assert resumed[0].data == protocol.resumed_event(k, 1, "replica lost (test)", {})
    assert resumed[-1].data["type"] == "done" and resumed[-1].data["chunks"] == 4
    # the reference: one uninterrupted stream, the same prompt re-cached at boundary k
    reference = events_of(Session(lambda: demo.results(host_request(rec)), rec, tmp_path / "c"), Steer(embeds_path, recache_at=k))
    ref = frames_by_chunk(reference)
    got = {**frames_by_chunk(first), **frames_by_chunk(resumed)}
    published = [e.data["index"] for e in first + resumed if e.data["type"] == "chunk"]
    assert published == [0, 1, 2, 3]  # every chunk once: no duplicate and no gap at the seam
    assert sum(len(f) for f in got.values()) == FRAMES
    assert all(got[i] == ref[i] for i in range(4))  # the JPEG bytes: the decoded frames are equal
    # and the seam is a real re-cache: an uninterrupted stream without one differs after the boundary (so the equality
    # above is not that of two streams that never differ)
    plain = frames_by_chunk(events_of(Session(lambda: demo.results(host_request(rec)), rec, tmp_path / "d"), Steer(embeds_path)))
    assert all(plain[i] == ref[i] for i in range(k)) and any(plain[i] != ref[i] for i in range(k, 4))


def test_a_full_history_stream_has_no_checkpoint_and_says_why(demo, embeds_path, tmp_path):
    rec = record("self_forcing", embeds_path)
    events = events_of(Session(lambda: demo.results(host_request(rec)), rec, tmp_path), Steer(embeds_path, stop_at=1))
    chunk = next(e for e in events if e.data["type"] == "chunk")
    assert chunk.checkpoint is None and "full history" in chunk.no_checkpoint
    why = resumption(Resilience(), "replica lost", 0, 1, None, chunk.no_checkpoint, None)
    assert isinstance(why, str) and "no state yet" in why and "full history" in why


def test_resumption_says_why_a_stream_cannot_go_on():
    fresh, old = Checkpoint(2, 1.0, b"state"), Checkpoint(2, 1.0, b"state", made_at=0.0)
    resilience = Resilience(max_resumes=2, resume_within_s=60)
    go_on = resumption(resilience, "lost", 1, 2, fresh, None, {"prompt": "x"})
    assert isinstance(go_on, Resume) and (go_on.chunk, go_on.attempt, go_on.switch) == (2, 2, {"prompt": "x"})
    start_over = resumption(resilience, "lost", 0, 0, None, None, None)
    assert isinstance(start_over, Resume) and start_over.checkpoint is None and start_over.chunk == 0
    assert "expired" in resumption(resilience, "lost", 0, 2, old, None, None)
    assert "at most 2 times" in resumption(resilience, "lost", 2, 2, fresh, None, None)
    assert "no state yet" in resumption(resilience, "lost", 0, 3, fresh, None, None)  # chunk 2 published after it
    with pytest.raises(ValueError, match="--max-resumes"):
        Resilience(max_resumes=-1)
    with pytest.raises(ValueError, match="--resume-within"):
        Resilience(resume_within_s=float("inf"))
