"""One running stream: the chunk loop over its caches, as an iterator that can be closed and steered.

``Engine.stream`` checks the request and returns a ``VideoStream``. Iterating it runs chunk after chunk (for a
bounded request, until the video is complete; for ``num_frames=None``, until ``close()``). ``set_prompt`` may be
called from any thread: the switch is queued and lands at the next chunk boundary (a switch that arrives
mid-chunk waits for that chunk; of several queued before one boundary, the last wins). With ``recache=False``
only the text cross-attention K/V change; with ``recache=True`` the frames the next chunk attends are also
re-encoded under the new prompt (``cache.recache.recache_window``). The chunk after a switch reports it
(``ChunkResult.prompt_switch``) with its cost.

The device work lives in ``stream_run.StreamRun``; this class owns the when: threads, closing, and (on a
sequence-parallel engine) the ranks' agreement at every boundary (``parallel.boundary``).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .parallel import boundary
from .parts import StreamParts
from .request_checks import RequestError, check_prompt_embeds
from .results import ChunkResult
from .results import PromptSwitch
from .stream_run import StreamRun
from .stream_state import StreamState, StreamStateError
from .video_request import VideoShape

# What puts a new stream's run where it starts (a resumed state, a given clip, an image), before its first chunk; it
# returns the re-cache it ran as a prompt switch report for that chunk, or None.
StartFn = Callable[[StreamRun], "PromptSwitch | None"]


@dataclass
class _Pending:
    embeds: torch.Tensor  # [B, L, text_dim] on the model's device, checked
    recache: bool


class StreamClosedError(RuntimeError):
    """A call on a stream that was closed (or ended): open a new one."""


class VideoStream(Iterator[ChunkResult]):
    def __init__(self, parts: StreamParts, prompt_embeds: torch.Tensor, shape: VideoShape, sched, plan, seed: int,
                 first_chunk: int = 0, start: StartFn | None = None, model: dict | None = None):
        self.parts, self.shape, self.schedule, self.plan = parts, shape, sched, plan
        self._prompt = prompt_embeds
        self._seed = seed
        self._first_chunk, self._start, self._model = first_chunk, start, model or {}
        self._run_obj: StreamRun | None = None  # made at the first chunk (or the first state()); kept, without rings, after
        self._start_switch: PromptSwitch | None = None  # what ``start`` re-cached: the first chunk reports it
        self._ready: list[ChunkResult] = []  # chunks finished by a state()'s flush, handed out before any new chunk
        self._lock = threading.Lock()  # guards the flags below, held only for a moment
        self._turn = threading.Lock()  # held while a chunk runs: close() from another thread then only sets the flag
        # switches queued and not landed yet; on one process the last lands (a newer one overrides), across ranks the
        # first (every rank makes the same calls, but one may queue its second before another queued its first)
        self._pending: list[_Pending] = []
        self._closed = False
        self._started = False
        self._next_chunk = first_chunk  # the chunk whose boundary the loop reaches next
        self._peers_told = False  # this rank's group agreed at a boundary to stop (or it told the others it stopped)
        self._in_chunk = False  # inside a chunk's forwards: the other ranks are in its collectives too
        self.caches: dict | None = None  # resolution -> RingKVCache while the stream runs; None once it ended
        self._gen = self._run()

    @property
    def live(self) -> bool:
        """An unbounded stream (``num_frames=None``): it runs until closed."""
        return self.shape.num_chunks is None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def holds_caches(self) -> bool:
        """Whether the stream's caches are still allocated (from its first chunk until it ends or is closed)."""
        return self._run_obj is not None and self._run_obj.res is not None

    def __iter__(self) -> "VideoStream":
        return self

    def __next__(self) -> ChunkResult:
        with self._turn:
            if self._closed:  # closed while a chunk ran: what close() could not do then is done now
                self._stop()
                raise StopIteration
            self._started = True
            if self._ready:
                return self._ready.pop(0)
            try:
                return next(self._gen)
            except StopIteration:
                raise
            except Exception:
                # an error on this rank between chunks (a decode, a check every rank makes): the others, at or on
                # their way to the next boundary, hear that this one stopped instead of waiting for it there
                if not self._in_chunk:
                    self._tell_peers()
                raise

    def close(self) -> None:
        """Stop the stream and free its caches at once (or, when another thread is inside a chunk, as that chunk ends).

        On a sequence-parallel stream whose other ranks will reach another chunk boundary, this rank takes its part
        in that boundary's exchange, saying it closed: the others stop there too instead of waiting for it."""
        with self._lock:
            self._closed = True
            self._pending = []
        if not self._turn.acquire(blocking=False):
            return  # another thread is running a chunk: the loop (or the next ``__next__``) stops at its end
        try:
            self._stop()
        finally:
            self._turn.release()

    def _stop(self) -> None:
        """Under ``_turn``: tell the other ranks, where they will wait at a boundary, and free the caches."""
        try:
            self._tell_peers()
        finally:
            self._gen.close()
            if self._run_obj is not None:  # a run made by state() before the first chunk has no generator frame to end
                self._run_obj.release_caches()
                self.caches = None

    def _tell_peers(self) -> None:
        par = self.parts.parallel
        if par is not None and not self._peers_told and self._boundary_ahead():
            self._peers_told = True
            boundary.notify_stopped(par)

    def _boundary_ahead(self) -> bool:
        return self.live or self._next_chunk < self.shape.num_chunks

    def set_prompt(self, prompt_embeds, recache: bool = True) -> None:
        """Switch to ``prompt_embeds`` (``[L, text_dim]`` or ``[B, L, text_dim]``, the stream's batch) at the next chunk
        boundary. Checked here, in the caller's thread, by the same check a stream's first prompt passes; the switch
        itself runs in the stream's thread."""
        if not isinstance(recache, bool):
            raise TypeError(f"recache must be True or False, got {recache!r}")
        if self._closed:
            raise StreamClosedError("this stream is closed: open a new one with engine.stream(...)")
        embeds = self._checked_embeds(prompt_embeds)
        if recache and self.plan.history_frames is None:
            raise ValueError("recache=True needs a sliding-window schedule (window='anchor'): a full-history window would "
                             "re-encode the whole video; use recache=False or a windowed schedule")
        with self._lock:
            if self._closed:
                raise StreamClosedError("this stream is closed: open a new one with engine.stream(...)")
            self._pending.append(_Pending(embeds, recache))

    def _checked_embeds(self, embeds) -> torch.Tensor:
        embeds = check_prompt_embeds(embeds, self.parts.dit.config.text_dim)
        batch = self._prompt.shape[0]
        if embeds.shape[0] != batch:
            raise RequestError(f"new prompt embeddings hold a batch of {embeds.shape[0]}; this stream streams {batch}: give "
                               f"[L, {embeds.shape[2]}] or [{batch}, L, {embeds.shape[2]}]")
        return embeds.to(self.parts.device, self._prompt.dtype)

    def state(self, include_cache: bool = False) -> StreamState:
        """What this stream needs to go on, at the boundary after the last chunk it has denoised (``stream_state``):
        between chunks, or once it ended; ``include_cache`` adds the rings (while it runs). A decode still in flight
        (on a GPU, chunk k decodes while k+1 denoises) is finished first, and the chunks it finishes are handed out by
        the next ``next()`` calls, before any new chunk runs: so the state's boundary comes after every chunk the
        caller will have received by then. ``Engine.resume`` goes on from it."""
        if not isinstance(include_cache, bool):
            raise TypeError(f"include_cache must be True or False, got {include_cache!r}")
        if include_cache and self.parts.parallel is not None:
            raise StreamStateError("include_cache on a sequence-parallel stream: each rank holds only its own heads' rings; "
                                   "take the state without them (every rank's is the same)")
        with self._turn:
            if self._closed and self._run_obj is not None and self._run_obj.decoder is not None and self._run_obj.decoder.pending:
                raise StreamStateError("this stream was closed with a chunk still decoding: its frames never reached you, "
                                       "so no state continues after them")
            run = self._ensure_run()
            if run.decoder is not None:
                self._ready.extend(run.decoder.flush())
            return run.snapshot(self._next_chunk, include_cache, self._model)

    def _boundary(self) -> tuple[bool, _Pending | None]:
        """At a chunk boundary: whether to stop, and the prompt switch to land now (or None). On one process the newest
        switch lands and the ones it overrode are dropped; on a sequence-parallel stream the ranks agree first
        (``parallel.boundary.agree``) and switches land in the order they were queued, one a boundary. Each rank still
        calls ``close()`` itself, as with every other call."""
        par = self.parts.parallel
        with self._lock:
            closed = self._closed
            if par is None:
                pending = self._pending[-1] if self._pending else None
                self._pending = []
                return closed, None if closed else pending
            pending = self._pending[0] if self._pending else None
        stop, lands = boundary.agree(par, closed, pending)
        if stop:
            self._peers_told = True  # the group stops here: no rank waits at another boundary
            return True, None
        if not lands:
            return False, None  # a rank has no switch queued yet: this one waits for it, still queued
        with self._lock:
            if self._pending and self._pending[0] is pending:
                self._pending.pop(0)
        return False, pending

    @torch.no_grad()
    def _ensure_run(self) -> StreamRun:
        if self._run_obj is None:
            run = StreamRun(self.parts, self.shape, self.schedule, self.plan, self._prompt, self._seed)
            self._start_switch = self._start(run) if self._start is not None else None
            self._run_obj, self.caches = run, run.caches
        return self._run_obj

    @torch.no_grad()
    def _run(self) -> Iterator[ChunkResult]:
        run = self._ensure_run()
        try:
            yield from self._chunks(run)
        finally:
            self.caches = None
            run.release_caches()

    def _chunks(self, run: StreamRun) -> Iterator[ChunkResult]:
        start = self._first_chunk
        chunks = itertools.count(start) if self.shape.num_chunks is None else range(start, self.shape.num_chunks)
        for c in chunks:
            stop, pending = self._boundary()
            if stop and self._closed:
                return
            if stop:
                break  # another rank stopped: the chunks this one denoised still reach its caller (its decoder lags one)
            self._in_chunk = True
            switch, self._start_switch = self._start_switch, None
            if pending is not None:
                switch = run.switch_prompt(pending.embeds, pending.recache, c)
                self._prompt = pending.embeds
            x0, mode, views, steps = run.denoise_chunk(c)
            self._next_chunk, self._in_chunk = c + 1, False
            yield from run.output(run.finish_chunk(c, x0, mode, views, steps, switch))
        yield from run.flush()
