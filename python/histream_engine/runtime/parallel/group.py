"""The process group a sequence-parallel engine runs on, and the agreement every rank reaches before it acts.

``init_parallel()`` joins the group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL with
one GPU per rank where CUDA is visible, gloo on CPUs. A host that made its own group (a Ray actor, another
framework) passes it as ``EngineConfig(parallel="ulysses", group=...)`` instead; nothing here keeps module-level
state, so two engines on two groups can share a process.

Every rank runs the same program (SPMD). A request that differs between ranks, or a check that fails on one
rank only (free memory differs per GPU), would leave the others waiting in a collective forever. So before a
stream's first collective the ranks exchange a small fingerprint of what they were asked and the outcome of
their checks (``ParallelGroup.agreed``), and all of them raise the same clear error, or none does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")

PARALLEL_MODES = (None, "ulysses")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RanksDisagree(ValueError):
    """Ranks of one sequence-parallel group were given different requests (or models)."""


@dataclass(frozen=True)
class ParallelGroup:
    group: Any  # torch.distributed ProcessGroup; None = the default group
    rank: int
    world_size: int
    device: torch.device  # the device this rank runs on (cuda:LOCAL_RANK under NCCL)

    @property
    def is_first(self) -> bool:
        """Rank 0 writes files, prints progress and decodes frames."""
        return self.rank == 0

    def all_gather_object(self, obj) -> list:
        import contextlib

        import torch.distributed as dist

        out = [None] * self.world_size
        # NCCL stages the objects on the calling thread's current device: the rank's own, from whichever thread
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            dist.all_gather_object(out, obj, group=self.group)
        return out

    def agreed(self, what: str, fingerprint: dict, run: Callable[[], T]) -> T:
        """``run()`` on this rank once every rank was given the same ``fingerprint`` (a dict of short, picklable
        values), and only if it succeeds on every rank; otherwise every rank raises the same error, naming the
        rank and the fields that differ. One small all-gather: no rank is left waiting for another."""
        try:
            result, error = run(), None
        except Exception as exc:  # noqa: BLE001 - handed to every rank, then raised here as it was
            result, error = None, exc
        reports = self.all_gather_object((fingerprint, None if error is None else (_builtin_kind(error), str(error))))
        differ = sorted({k for fp, _ in reports for k in set(fp) | set(fingerprint) if fp.get(k) != fingerprint.get(k)})
        if differ:
            by_rank = "; ".join(f"rank {r}: " + ", ".join(f"{k}={fp.get(k)!r}" for k in differ) for r, (fp, _) in enumerate(reports))
            raise RanksDisagree(f"the {self.world_size} ranks were given different {what} ({by_rank}): every rank of a "
                                "sequence-parallel group must make the same call with the same arguments and model")
        failed = [(r, err) for r, (_, err) in enumerate(reports) if err is not None]
        if not failed:
            return result
        r, (kind, message) = failed[0]
        text = f"rank {r} refused {what}: {message}"
        if error is not None and r == self.rank:
            try:  # this rank's own error, with the same words every other rank raises
                same = type(error)(text)
            except Exception:  # noqa: BLE001 - an exception class that takes other arguments: raise it as it was
                raise error from None
            raise same from error
        raise _same_kind(kind)(text)

    def all_reduce_max(self, values: list[int]) -> list[int]:
        """Element-wise max over the ranks of a few small integers (one tiny collective)."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.int64, device=self.device)  # [len(values)]
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t.tolist()


def _builtin_kind(error: Exception) -> str:
    """The nearest built-in class of ``error`` (ValueError for a refused request or path, MemoryError, ...): what the
    other ranks raise, so that their callers catch what this rank's caller catches."""
    import builtins

    return next(c.__name__ for c in type(error).__mro__ if getattr(builtins, c.__name__, None) is c)


def _same_kind(name: str) -> type[Exception]:
    import builtins

    kind = getattr(builtins, name, None)
    return kind if isinstance(kind, type) and issubclass(kind, Exception) else RuntimeError


def tensor_fingerprint(t) -> str:
    """A short digest of a tensor's shape, dtype and bytes; any other value's repr (long ones with a digest of the
    whole). Never raises: it is computed before the checks that would refuse a bad value, so that ranks can compare
    what they were given first."""
    if not isinstance(t, torch.Tensor):
        text = repr(t)
        return text if len(text) <= 80 else f"{text[:60]}... {hashlib.sha1(text.encode()).hexdigest()[:12]}"
    try:
        data = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    except (RuntimeError, TypeError):
        data = b""
    return f"{tuple(t.shape)} {t.dtype} " + hashlib.sha1(data).hexdigest()[:16]


def model_fingerprint(module: torch.nn.Module) -> str:
    """Digest of every parameter's float64 sum: ranks holding different weights (another file, another seed) would
    otherwise stream a wrong video without a word. One pass over the weights and one host read, at engine setup."""
    sums = torch.stack([p.detach().sum(dtype=torch.float64) for p in module.parameters()])  # [num_params]
    return hashlib.sha1(sums.cpu().numpy().tobytes()).hexdigest()[:16]


def arguments_fingerprint(args) -> dict:
    """Every option of a parsed command line (``argparse.Namespace``), for the ranks of ``--parallel`` to check they
    were all given the same."""
    return {k: tensor_fingerprint(v) for k, v in sorted(vars(args).items()) if k != "func"}


def engine_fingerprint(dit, config, vae=None) -> dict:
    """What the ranks of one engine must share: the model (config, dtype, weights) and the engine settings. The
    decoder is left out: only the first rank decodes, so a host may give it there alone."""
    import dataclasses

    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "group"}
    return {"model": repr(getattr(dit, "config", None)), "dtype": str(getattr(dit, "dtype", None)),
            "weights": model_fingerprint(dit), "settings": repr(settings)}


def resolve_group(group) -> ParallelGroup:
    """The engine's view of ``group`` (None: the default group), refusing where there is no initialised one."""
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("parallel='ulysses' needs torch.distributed, which this torch build does not have")
    if not dist.is_initialized():
        raise ValueError("parallel='ulysses' needs an initialised process group: call histream_engine.init_parallel() "
                         "under torchrun (torchrun --nproc-per-node N app.py), or dist.init_process_group(...) and pass "
                         "EngineConfig(group=...)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise ValueError("this process is not a member of the process group given as EngineConfig(group=...)")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return ParallelGroup(group, rank, world, device)


def init_parallel(backend: str | None = None, timeout_seconds: float = 600.0) -> ParallelGroup:
    """Join the default process group from torchrun's environment and return it as a ``ParallelGroup``.

    ``backend`` None picks NCCL where CUDA is visible (each rank on ``cuda:LOCAL_RANK``) and gloo otherwise. A rank
    that never arrives is an error after ``timeout_seconds``, not a hang."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        missing = [v for v in TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise RuntimeError(f"init_parallel() reads torchrun's environment, and {', '.join(missing)} "
                               f"{'is' if len(missing) == 1 else 'are'} not set: start the program with "
                               "torchrun --nproc-per-node N ... (or call torch.distributed.init_process_group yourself)")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            local = int(os.environ["LOCAL_RANK"])
            if local >= torch.cuda.device_count():
                raise RuntimeError(f"LOCAL_RANK {local} has no GPU: this node shows {torch.cuda.device_count()}; "
                                   "start at most that many processes per node")
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return resolve_group(None)
