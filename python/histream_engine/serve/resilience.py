"""Streams that outlive their worker (docs/serve.md, "Streams that survive"): checkpoints, and when a stream is resumed.

At every chunk boundary the session takes the stream's state without its rings (``VideoStream.state``: the attended
frames' clean latents, the noise generator, the chunk counter, the prompt, the decoder's history) and hands it to the
transport as a ``Checkpoint`` with the chunk event whose publication makes it consistent: every chunk before its
boundary has been published by then. The transport keeps the newest one where it survives the worker (the registry
actor over Ray, ``--data-dir`` on plain serve). When the worker is lost, the transport asks ``resumption`` what to do:
go on from the checkpoint (a ``Resume``), start over (nothing was published yet), or fail with the reason.

A resumed stream re-encodes the frames its next chunk attends under its prompt first (``Engine.resume`` of a state
without rings): so the frames after the seam are exactly those of the uninterrupted stream with a same-prompt
``set_prompt(recache=True)`` at that boundary, and none before it is made again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Resilience:
    """The server's resume options (``--max-resumes``, ``--resume-within``), checked when they are made."""

    max_resumes: int = 3  # a stream lost again after this many resumes fails (a stream that keeps crashing its worker)
    resume_within_s: float = 600.0  # a checkpoint older than this has expired: it is not resumed

    def __post_init__(self):
        if isinstance(self.max_resumes, bool) or not isinstance(self.max_resumes, int) or self.max_resumes < 0:
            raise ValueError(f"--max-resumes {self.max_resumes!r}: give a whole number >= 0 (0: never resume)")
        seconds = self.resume_within_s
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"--resume-within {seconds!r}: give a finite number of seconds > 0")


@dataclass
class Checkpoint:
    """A stream's state at a chunk boundary, once every chunk before it was published."""

    chunk: int  # the boundary: the chunk a resumed stream makes first
    seconds: float  # the stream's seconds since it started, at the boundary (a live stream's duration counts on)
    state: bytes  # StreamState.to_bytes(), without rings
    made_at: float = field(default_factory=time.time)  # wall clock: a restarted server compares it too

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.made_at

    def meta(self) -> dict:
        """Everything but the state's bytes (what a job record on disk holds beside the state's file)."""
        return {"chunk": self.chunk, "seconds": self.seconds, "made_at": self.made_at}


@dataclass
class Resume:
    """How a session goes on after its worker was lost: from ``checkpoint``, or from the start when None (no chunk had
    been published), under the newest prompt switch the server accepted (``switch``, a PromptSwitchRequest's dict), if
    any: a switch that had landed is the state's own prompt already, and one that had not lands at the seam."""

    checkpoint: Checkpoint | None
    attempt: int  # 1 for a stream's first resume
    why: str  # what ended the last attempt
    switch: dict | None = None

    @property
    def chunk(self) -> int:
        return 0 if self.checkpoint is None else self.checkpoint.chunk


def resumption(resilience: Resilience, why: str, resumes: int, published: int, checkpoint: Checkpoint | None,
               no_state: str | None, switch: dict | None) -> Resume | str:
    """After a lost attempt (``why``): the ``Resume`` to run, or why the stream cannot go on (its ``failed`` error).

    ``resumes``: the stream's resumes so far; ``published``: its chunks published; ``no_state``: why it has no
    checkpoint (its schedule keeps the full history), if it has none."""
    if resumes >= resilience.max_resumes:
        return (f"{why}; not resumed again: this server resumes a stream at most {resilience.max_resumes} times "
                "(--max-resumes), and this one was lost each time")
    if checkpoint is None or checkpoint.chunk < published:
        if published == 0:
            return Resume(None, resumes + 1, why, switch)  # nothing was published: it starts over, as it would have
        return f"{why}; it cannot be resumed: no state yet ({no_state or 'none was kept after its last published chunk'})"
    if checkpoint.age() > resilience.resume_within_s:
        return (f"{why}; it cannot be resumed: its last state (chunk {checkpoint.chunk}, {checkpoint.age():.0f} s old) "
                f"expired: this server resumes within {resilience.resume_within_s:g} s (--resume-within)")
    return Resume(checkpoint, resumes + 1, why, switch)
