"""Parameter-name maps between the Wan original layout (ours) and diffusers' WanTransformer3DModel.

One table of (wan, diffusers) name prefixes (DESIGN 3) serves both directions. A prefix ending in "."
renames a module; one without renames exactly that parameter.
"""

from __future__ import annotations

import re

_TOP: tuple[tuple[str, str], ...] = (
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
)

# Inside ``blocks.{i}.``.
_BLOCK: tuple[tuple[str, str], ...] = (
    ("modulation", "scale_shift_table"),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
    ("norm3.", "norm2."),
) + tuple(
    (f"{ours}.{a}", f"{theirs}.{b}")
    for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2"))
    for a, b in (("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("o.", "to_out.0."), ("norm_q.", "norm_q."), ("norm_k.", "norm_k."))
)

_BLOCK_KEY = re.compile(r"^(blocks\.\d+\.)(.*)$")

# Prefixes that training wrappers (FSDP, activation checkpointing, torch.compile) put anywhere in a key.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def swap_prefix(name: str, pairs, src: int) -> str | None:
    """Rename ``name`` by the first (a, b) pair whose side ``src`` matches it (a prefix ending in '.', or exactly)."""
    for pair in pairs:
        old, new = pair[src], pair[1 - src]
        if name == old or (old.endswith(".") and name.startswith(old)):
            return new + name[len(old) :]
    return None


def _rename(key: str, src: int) -> str:
    m = _BLOCK_KEY.match(key)
    if m:
        return m.group(1) + (swap_prefix(m.group(2), _BLOCK, src) or m.group(2))
    return swap_prefix(key, _TOP, src) or key


def wan_to_diffusers(state: dict) -> dict:
    return {_rename(k, 0): v for k, v in state.items()}


def diffusers_to_wan(state: dict) -> dict:
    return {_rename(k, 1): v for k, v in state.items()}


def strip_wrappers(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key
