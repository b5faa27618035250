"""The chunk boundary of a sequence-parallel stream: where its ranks agree whether to stop and which prompt switch
lands, whichever of their threads each one's ``close()`` or ``set_prompt()`` came from."""

from __future__ import annotations

from .group import ParallelGroup, tensor_fingerprint


def notify_stopped(par: ParallelGroup) -> None:
    """Take part in the next boundary's exchange as a rank that stopped, so the others stop there too instead of
    waiting for this one."""
    par.all_reduce_max([1, 1])  # (stopped, no switch queued): the flags ``agree`` exchanges


def agree(par: ParallelGroup, closed: bool, pending) -> tuple[bool, bool]:
    """One tiny collective a boundary: (whether any rank closed, whether every rank has a switch queued). A queued
    switch lands only once every rank has it, after they checked it is the same switch."""
    any_closed, any_missing = par.all_reduce_max([int(closed), int(pending is None)])
    if any_closed or any_missing:
        return bool(any_closed), False
    par.agreed("prompt switches", {"embeds": tensor_fingerprint(pending.embeds), "recache": pending.recache}, lambda: None)
    return False, True
