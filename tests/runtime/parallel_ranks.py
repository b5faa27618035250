"""What each rank of the sequence-parallel tests runs (tests/runtime/test_parallel.py), in its own process.

One spawn per world size runs every case, so the cost of starting N processes (torch imports, the gloo group) is
paid once; each case's outcome (latents, cache bytes, or the error it raised) is saved per rank and compared in
the test process against the single-process engine.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import traceback

import torch
import torch.distributed as dist

SIX_HEADS = dict(dim=96, ffn_dim=128, num_heads=6, num_layers=2, text_dim=32, freq_dim=32)
# (name, schedule, frames, height, width): token counts per frame that N=2 and N=3 do not divide appear at one
# resolution or the other (96x160: high 60, low 15; 64x160: high 40, low 10; 48x80: 15 tokens)
VIDEOS = (
    ("histream_plus_96x160", "histream_plus", 21, 96, 160),
    ("histream_plus_64x160", "histream_plus", 21, 64, 160),
    ("self_forcing_48x80", "self_forcing", 21, 48, 80),
)


def model(seed: int = 0, **changes):
    from histream_engine import WanConfig, WanDiT

    torch.manual_seed(seed)
    # Drawn on the host, so that every rank and the test process build the same model: the gloo ranks run on the CPU,
    # run_cuda_graphs moves it to each rank's GPU.
    # fixed-device: one model for every rank, drawn on the host
    dit = WanDiT(WanConfig(**{**SIX_HEADS, **changes}))
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.1)  # larger than default init, so that an error anywhere shows
    return dit.eval().requires_grad_(False)


def prompt(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)  # fixed-device: one prompt for every rank, drawn on the host
    p = torch.randn(1, 20, SIX_HEADS["text_dim"], generator=g)  # fixed-device: [1, 20, text_dim], on the host
    p[:, 12:] = 0  # zero padding, as a real prompt has
    return p


def video(engine, name, schedule, frames, height, width, seed: int = 5):
    chunks = list(engine.stream(prompt(), frames, height, width, schedule=schedule, seed=seed))
    return {"latents": torch.cat([c.latents for c in chunks], dim=2), "cache_bytes": chunks[-1].cache_bytes}


def live(engine, switch_after: int, chunks: int = 6, new_prompt: torch.Tensor | None = None) -> dict:
    """A live stream with one prompt switch (re-cache) to ``new_prompt`` (None: another prompt) queued after chunk
    ``switch_after``, closed after ``chunks``."""
    from histream_engine import SCHEDULES

    stream = engine.stream(prompt(), None, 96, 160, schedule=SCHEDULES["histream_plus"].replace(positions="window"), seed=5)
    got = []
    for chunk in stream:
        got.append(chunk)
        if chunk.index == switch_after:
            stream.set_prompt(prompt(seed=2) if new_prompt is None else new_prompt, recache=True)
        if len(got) == chunks:
            break
    stream.close()
    return {"latents": torch.cat([c.latents for c in got], dim=2), "switched": [c.index for c in got if c.prompt_switch],
            "freed": not stream.holds_caches}


def resumed(engine, rank: int, after: int, chunks: int = 6) -> dict:
    """A live stream stopped after chunk ``after``; rank 0's state at that boundary, as bytes (what a server keeps), is
    handed to every rank, and each resumes it for the rest of ``chunks``, as a rebuilt group does."""
    from histream_engine import SCHEDULES
    from histream_engine.runtime.stream_state import stream_state_from_bytes

    stream = engine.stream(prompt(), None, 96, 160, schedule=SCHEDULES["histream_plus"].replace(positions="window"), seed=5)
    got = list(itertools.islice(stream, after + 1))
    state = [stream.state().to_bytes() if rank == 0 else None]
    stream.close()
    dist.broadcast_object_list(state, src=0)
    stream = engine.resume(stream_state_from_bytes(state[0]))
    got += list(itertools.islice(stream, chunks - after - 1))
    stream.close()
    return {"latents": torch.cat([c.latents for c in got], dim=2), "indices": [c.index for c in got],
            "switched": [c.index for c in got if c.prompt_switch], "freed": not stream.holds_caches}


class FailingDecoder:
    """A decoder (``model.decoder.VideoDecoder``) whose decode raises once it decoded ``after`` + 1 chunks."""

    # fixed-device: a stand-in decoder beside the gloo ranks' CPU model
    name, latent_channels, dtype, device = "failing", 16, torch.float32, torch.device("cpu")

    def __init__(self, after: int):
        self.after, self.calls = after, 0

    def new_state(self):
        return None

    def decode(self, latents, state=None):
        self.calls += 1
        if self.calls > self.after + 1:
            raise RuntimeError("the decoder failed")
        frames = 4 * latents.shape[2] - (3 if self.calls == 1 else 0)  # a video's first latent frame decodes to one
        return torch.zeros(latents.shape[0], 3, frames, 8 * latents.shape[3], 8 * latents.shape[4], device=latents.device)  # [B, 3, T, H, W]


def caught(fn) -> dict:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test asserts on the type and the message
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}


def run(rank: int, world: int, init_file: str, out: str, attention: str) -> None:
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    from histream_engine import Engine, EngineConfig
    from histream_engine.runtime import engine as engine_module

    with reported(rank, out) as results:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        config = EngineConfig(attention=attention, parallel="ulysses")
        engine = Engine(model(), config)
        for name, *args in VIDEOS:
            before = engine.runner.exchange.bytes_sent
            results[name] = video(engine, name, *args)
            results[name]["bytes_sent"] = engine.runner.exchange.bytes_sent - before

        # each rank queues the switch a chunk later than the one before: it lands when the last rank has it
        results["live_staggered_switch"] = live(engine, switch_after=1 + rank)

        # rank 0's state after chunk 2, resumed on every rank: the stream goes on as with a same-prompt re-cache there
        results["resumed"] = resumed(engine, rank, after=2)

        # the first rank closes a live stream after chunk 2 from its own loop; the others stop at the next boundary
        from histream_engine import SCHEDULES

        stream = engine.stream(prompt(), None, 64, 96, schedule=SCHEDULES["histream"].replace(positions="window"))
        seen = []
        for chunk in stream:
            seen.append(chunk.index)
            if rank == 0 and chunk.index == 2:
                stream.close()
            if len(seen) == 10:
                break
        results["one_rank_closes"] = {"seen": seen, "freed": not stream.holds_caches}

        # the first rank's stream is closed from another thread while its chunk 2 runs: every rank stops after it
        stream = engine.stream(prompt(), None, 64, 96, schedule=SCHEDULES["histream"].replace(positions="window"))
        plain_step = engine.runner.step

        def step_closing_mid_chunk_2(*args):
            if rank == 0 and stream._next_chunk == 2:  # a step of chunk 2 (the next boundary is chunk 3's)
                closer = threading.Thread(target=stream.close)
                closer.start()
                closer.join()  # close() returns at once: the chunk holds the stream's turn
            return plain_step(*args)

        engine.runner.step = step_closing_mid_chunk_2
        seen = [c.index for c in itertools.islice(stream, 10)]
        engine.runner.step = plain_step
        results["closed_mid_chunk"] = {"seen": seen, "freed": not stream.holds_caches}

        # the first rank's decoder fails after chunk 1 (an error between chunks on one rank): the others stop too
        engine.vae = FailingDecoder(after=1) if rank == 0 else None
        got = []
        try:
            for chunk in engine.stream(prompt(), 45, 64, 96, schedule="histream"):
                got.append(chunk.index)
        except RuntimeError as exc:
            got.append(str(exc))
        engine.vae = None
        results["decoder_fails"] = got

        # a request that differs on one rank: every rank refuses it, naming the field; the group stays usable
        seed = 5 + rank % 2
        results["seeds_differ"] = caught(lambda: list(engine.stream(prompt(), 9, 48, 80, schedule="self_forcing", seed=seed)))
        # a check that fails on the last rank alone (say its GPU has less free memory): all of them refuse
        real = engine_module.check_fits

        def short_on_the_last(estimate, device, what):
            if rank == world - 1:
                raise ValueError(f"{what} needs more memory than this rank has")
            real(estimate, device, what)

        engine_module.check_fits = short_on_the_last
        results["one_rank_refuses"] = caught(lambda: engine.stream(prompt(), 9, 48, 80, schedule="self_forcing"))
        engine_module.check_fits = real
        results["after_refusals"] = video(engine, *VIDEOS[2])

        # weights that differ between ranks, and heads the world size does not divide
        results["weights_differ"] = caught(lambda: Engine(model(seed=rank), config))
        results["heads_indivisible"] = caught(lambda: Engine(model(num_heads=world + 1, dim=16 * (world + 1)), config))


def run_cuda_graphs(rank: int, world: int, init_file: str, out: str) -> None:
    """On ``world`` GPUs with NCCL: histream_plus with the steady chunks replayed as CUDA graphs (the all-to-alls and
    the gather captured with the kernels) against the same stream run eagerly."""
    from histream_engine import Engine, EngineConfig

    with reported(rank, out) as results:
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
        device = torch.device("cuda", rank)  # fixed-device: each NCCL rank on its own GPU
        dit = model().to(device)
        for graphs in (False, True):
            engine = Engine(dit, EngineConfig(parallel="ulysses", cuda_graphs=graphs))
            chunks = list(engine.stream(prompt().to(device), 45, 96, 160, schedule="histream_plus", seed=5))
            results[graphs] = {"latents": torch.cat([c.latents for c in chunks], dim=2).cpu(), "modes": [c.run_mode for c in chunks]}


@contextlib.contextmanager
def reported(rank: int, out: str):
    """The dict a rank fills with its cases' outcomes, saved for the test whatever happens (a crash as its traceback,
    which the test fails with), and the rank's process group left."""
    results = {}
    try:
        yield results
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        results["crash"] = traceback.format_exc()
    finally:
        torch.save(results, f"{out}/rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()
