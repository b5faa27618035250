"""One running stream: the chunk loop over its caches, as an iterator that can be closed and steered.

``Engine.stream`` checks the request and returns a ``VideoStream``. Iterating it runs chunk after chunk (for a
bounded request, until the video is complete; for ``num_frames=None``, until ``close()``). ``set_prompt`` may be
called from any thread: the switch is queued and lands at the next chunk boundary (a switch that arrives
mid-chunk waits for that chunk; of several queued before one boundary, the last wins). With ``recache=False``
only the text cross-attention K/V change; with ``recache=True`` the frames the next chunk attends are also
re-encoded under the new prompt (``recache.recache_window``). The chunk after a switch reports it
(``ChunkResult.prompt_switch``) with its cost.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from .cache.layer_attention import WindowAttention
from .denoise.chunk_graphs import ChunkGraphs
from .decoding import ChunkDecoder
from .denoise.finite_check import check_finite_latents
from .parallel.group import tensor_fingerprint
from .cache.recache import LatentRing, RecacheTarget, recache_window
from .results import ChunkResult, PromptSwitch, chunk_video_frames
from .denoise.schedules import RESOLUTIONS
from .timing import ChunkTimer

if TYPE_CHECKING:
    from .engine import Engine, VideoShape


@dataclass
class _Pending:
    embeds: torch.Tensor  # [B, L, text_dim] on the model's device, checked
    recache: bool


class StreamClosedError(RuntimeError):
    pass


class VideoStream(Iterator[ChunkResult]):
    def __init__(self, engine: "Engine", prompt_embeds: torch.Tensor, shape: "VideoShape", sched, plan, seed: int):
        self.engine, self.shape, self.schedule, self.plan = engine, shape, sched, plan
        self._prompt = prompt_embeds
        self._seed = seed
        self._lock = threading.Lock()  # guards the flags below, held only for a moment
        self._turn = threading.Lock()  # held while a chunk runs: close() from another thread then only sets the flag
        # switches queued and not landed yet; on one process the last lands (a newer one overrides), across ranks the
        # first (every rank makes the same calls, but one may queue its second before another queued its first)
        self._pending: list[_Pending] = []
        self._closed = False
        self._started = False
        self._next_chunk = 0  # the chunk whose boundary the loop reaches next
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
        return self._started and self._gen.gi_frame is not None

    def __iter__(self) -> "VideoStream":
        return self

    def __next__(self) -> ChunkResult:
        with self._turn:
            if self._closed:  # closed while a chunk ran: what close() could not do then is done now
                self._stop()
                raise StopIteration
            self._started = True
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

    def _tell_peers(self) -> None:
        par = self.engine.parallel
        if par is not None and not self._peers_told and self._boundary_ahead():
            self._peers_told = True
            par.all_reduce_max([1, 1])  # (stopped, no switch queued): the flags ``_boundary`` exchanges

    def _boundary_ahead(self) -> bool:
        return self.live or self._next_chunk < self.shape.num_chunks

    def set_prompt(self, prompt_embeds, recache: bool = True) -> None:
        """Switch to ``prompt_embeds`` (``[L, text_dim]`` or ``[B, L, text_dim]``, the stream's batch and dtype) at the
        next chunk boundary. Checked here, in the caller's thread; the switch itself runs in the stream's."""
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
        if not isinstance(embeds, torch.Tensor):
            raise TypeError(f"prompt embeddings must be a torch.Tensor [L, text_dim] or [B, L, text_dim], got {type(embeds).__name__}")
        if embeds.dim() == 2:
            embeds = embeds.unsqueeze(0)
        cur = self._prompt
        if embeds.dim() != 3 or embeds.shape[0] != cur.shape[0] or embeds.shape[2] != cur.shape[2]:
            raise ValueError(f"new prompt embeddings have shape {tuple(embeds.shape)}; this stream takes [{cur.shape[0]}, L, "
                             f"{cur.shape[2]}] (its batch and the model's text width)")
        if embeds.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"new prompt embeddings are {embeds.dtype}; give float32, bfloat16 or float16 (this stream's "
                             f"prompt is {cur.dtype})")
        if not torch.isfinite(embeds).all():
            raise ValueError("new prompt embeddings hold NaN or Inf values")
        self.engine.dit.check_context(embeds)
        return embeds.to(self.engine.dit.device, cur.dtype)

    def _boundary(self) -> tuple[bool, _Pending | None]:
        """At a chunk boundary: whether to stop, and the prompt switch to land now (or None).

        The ranks of a sequence-parallel stream must stop and switch at the same chunk, whenever each rank's
        ``close()`` or ``set_prompt()`` arrived from its own threads: they exchange two flags per chunk (one tiny
        collective). Switches land in the order they were queued, one a boundary, once every rank has queued the
        next one, after the ranks checked it is the same switch; a close on any rank stops every rank. Each rank still
        calls ``close()`` itself, as with every other call."""
        par = self.engine.parallel
        with self._lock:
            closed = self._closed
            if par is None:  # one process: the newest switch lands, the ones it overrode are dropped
                pending = self._pending[-1] if self._pending else None
                self._pending = []
                return closed, None if closed else pending
            pending = self._pending[0] if self._pending else None
        any_closed, any_missing = par.all_reduce_max([int(closed), int(pending is None)])
        if any_closed:
            self._peers_told = True  # the group stops here: no rank waits at another boundary
            return True, None
        if any_missing:
            return False, None  # a rank has no switch queued yet: this one waits for it, still queued
        par.agreed("prompt switches", {"embeds": tensor_fingerprint(pending.embeds), "recache": pending.recache}, lambda: None)
        with self._lock:
            if self._pending and self._pending[0] is pending:
                self._pending.pop(0)
        return False, pending

    @torch.no_grad()
    def _run(self) -> Iterator[ChunkResult]:
        engine, shape, sched, plan = self.engine, self.shape, self.schedule, self.plan
        dit = engine.dit
        used = ("low", "high") if sched.uses_low else ("high",)
        res = {name: engine._resolution(name, shape, sched, plan) for name in used}
        self.caches = {name: r.cache for name, r in res.items()}
        try:
            yield from self._chunks(res)
        finally:
            self.caches = None

    def _chunks(self, res) -> Iterator[ChunkResult]:
        engine, shape, sched, plan = self.engine, self.shape, self.schedule, self.plan
        dit, M = engine.dit, engine.config.chunk_size
        device = dit.device
        raw_cross = dit.cross_kv(self._prompt.to(device))
        cross = {"kv": engine.forwards.prepare_cross(raw_cross)}  # replaced on a prompt switch
        latents = LatentRing(plan, shape.batch, dit.config.out_dim, (shape.latent_height, shape.latent_width), device) \
            if plan.history_frames is not None else None
        cache_bytes = sum(r.cache.nbytes for r in res.values())
        rope_dtype = torch.promote_types(dit.dtype, torch.float32)
        rope_positions = max(plan.max_temporal_position(engine.position_horizon(plan, shape)) + 1,
                             *(g for r in res.values() for g in r.grid))
        gen = torch.Generator(device=device).manual_seed(self._seed)
        timer = ChunkTimer(device)
        decoder = ChunkDecoder(engine.vae, device) if engine.decodes else None
        graphs = ChunkGraphs(engine.graph_factory())
        t_clean = torch.zeros((shape.batch, M), device=device)  # [B, M] recache timesteps

        def body(steps, noises: list[torch.Tensor], views: dict) -> torch.Tensor:
            attn = {name: WindowAttention(res[name].cache, view, engine.attention) for name, view in views.items()}
            return engine._denoise_chunk(steps, noises, attn, sched, cross["kv"], t_clean)

        chunks = itertools.count() if shape.num_chunks is None else range(shape.num_chunks)
        for c in chunks:
            stop, pending = self._boundary()
            if stop and self._closed:
                return
            if stop:
                break  # another rank stopped: the chunks this one denoised still reach its caller (its decoder lags one)
            self._in_chunk = True
            switch = None
            if pending is not None:
                t0 = time.perf_counter()
                raw_cross = dit.cross_kv(pending.embeds)
                cross["kv"] = engine.forwards.prepare_cross(raw_cross)
                extra = {name: 0 for name in RESOLUTIONS}
                if pending.recache:
                    targets = {name: RecacheTarget(r.cache, r.grid, r.freqs) for name, r in res.items()}
                    extra.update(recache_window(dit, engine.forwards, targets, latents, c, raw_cross, sched.low_factor, rope_dtype))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                # Captured graphs bake in the old text K/V's addresses (and their shapes change with the prompt's
                # length): the chunks after a switch run eagerly, then are captured anew.
                graphs = ChunkGraphs(engine.graph_factory())
                self._prompt = pending.embeds
                switch = PromptSwitch(pending.recache, extra, time.perf_counter() - t0)
            timer.start()
            steps = sched.steps(c)
            views = {name: r.cache.view(c, r.grid, r.freqs, rope_dtype, rope_positions) for name, r in res.items()}
            noises = [
                torch.randn((shape.batch, dit.config.in_dim, M) + res[s.resolution].latent_hw, generator=gen, device=device)  # [B, 16, M, h, w]
                for s in steps
            ]
            x0, mode = graphs.run(steps, noises, views, body)
            self._next_chunk, self._in_chunk = c + 1, False
            check_finite_latents(x0, c, steps)
            if latents is not None:
                latents.write(c, x0)
            forwards = {name: sum(s.resolution == name for s in steps) for name in RESOLUTIONS}
            recache = {name: int(name in res) for name in RESOLUTIONS}
            passes = [s.resolution for s in steps] + list(res)
            result = ChunkResult(
                index=c,
                latents=x0,
                seconds=timer.stop(),
                video_frames=chunk_video_frames(c, M),
                forwards=forwards,
                recache=recache,
                tokens_attended=sum(views[name].key_tokens for name in passes),
                cache_bytes=cache_bytes,
                latent_bytes=latents.nbytes if latents is not None else 0,
                run_mode=engine.forwards.run_mode or mode,
                prompt_switch=switch,
            )
            if decoder is None:
                yield result
            else:
                yield from decoder.submit(result)
        if decoder is not None:
            yield from decoder.flush()
