"""FP8 settings of an engine: the names, the ``precision="fp8"`` preset, what may combine, and applying them.

Three switches, each usable alone (``docs/fp8.md``):

- ``kv_dtype="float8_e4m3fn"``: the ring caches hold e4m3 K/V with per-(slot, head) scales (``runtime.kv_cache``);
- an FP8 attention core, chosen by backend name: ``triton_fp8`` (sm_90a), or ``torch_fp8`` (its numerics in torch);
- ``linear_dtype="float8_e4m3fn"``: the blocks' linear layers as scaled e4m3 matmuls (``model.fp8_linear``).

``EngineConfig.with_precision("fp8", attention=...)`` turns all three on, spelled out in the config it makes: both
dtypes, the FP8 counterpart of the chosen backend (``FP8_CORES``), and ``precision="fp8"`` naming the preset; a config
naming the preset with other fields is refused, never rewritten.
The dtype options are named after torch's dtype, so a value reads the same in Python, on the command line and in a
bench record, and a later e5m2 or MX format is another value, not another flag.
"""

from __future__ import annotations

import torch

from ...kernels.fp8_constants import E4M3
from ..request_checks import RequestError

FP8 = "float8_e4m3fn"
KV_DTYPES = (None, FP8)
LINEAR_DTYPES = (None, FP8)
PRECISIONS = (None, "fp8")
FP8_CORES = {"torch": "torch_fp8", "triton": "triton_fp8", "auto": "triton_fp8", "torch_fp8": "torch_fp8", "triton_fp8": "triton_fp8"}
MIN_CAPABILITY = (8, 9)  # e4m3 tensor cores: Ada (sm_89) and Hopper (sm_90)


def spelled_out(precision: str, attention: str = "torch") -> dict:
    """The fields ``precision`` stands for, with ``attention`` swapped for its FP8 core: what
    ``EngineConfig.with_precision`` writes into the config it makes."""
    if precision not in PRECISIONS or precision is None:
        raise ValueError(f"precision must be one of {[p for p in PRECISIONS if p]}, got {precision!r}")
    if attention not in FP8_CORES:
        raise RequestError(f"precision={precision!r} has no FP8 attention core for attention={attention!r}: use one of "
                           f"{sorted(FP8_CORES)}", param="attention", python_hint=", or set kv_dtype/linear_dtype alone")
    return {"precision": precision, "kv_dtype": FP8, "linear_dtype": FP8, "attention": FP8_CORES[attention]}


def check(config) -> None:
    """An ``EngineConfig``'s FP8 fields (its ``__post_init__``). ``precision`` names the preset its other fields were
    spelled out from: a config whose fields say otherwise is refused with the fields the preset would change."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {config.precision!r}")
    if config.kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be None (the model dtype) or {FP8!r}, got {config.kv_dtype!r}")
    if config.linear_dtype not in LINEAR_DTYPES:
        raise ValueError(f"linear_dtype must be None (the model dtype) or {FP8!r}, got {config.linear_dtype!r}")
    if config.precision is not None:
        base = next((name for name, core in FP8_CORES.items() if core == config.attention), config.attention)
        wanted = spelled_out(config.precision, base if config.attention in FP8_CORES.values() else config.attention)
        changes = [f"{k}={getattr(config, k)!r} -> {v!r}" for k, v in wanted.items() if getattr(config, k) != v]
        if changes:
            raise ValueError(f"precision={config.precision!r} stands for {', '.join(f'{k}={v!r}' for k, v in wanted.items() if k != 'precision')}; "
                             f"this config has {'; '.join(changes)}. Nothing is changed behind your back: give those "
                             f"fields too, or build the config with EngineConfig.with_precision({config.precision!r}, "
                             f"attention={base!r})")


def uses_fp8(config) -> bool:
    return config.kv_dtype == FP8 or config.linear_dtype == FP8


def refuse_for_exported_graphs(config) -> None:
    if uses_fp8(config):
        raise ValueError(f"kv_dtype/linear_dtype FP8 apply to dit='torch'; dit={config.dit!r} runs exported graphs, whose FP8 is "
                         "chosen when they are built (histream export --fp8, histream build-trt --precision fp8)")


def check_engine(config, backend, dit) -> None:
    """What needs the backend and the model: refused combinations, with the reason. Whether the backend reads the
    ring's dtype is its ``capabilities`` (``attention.protocol.Capabilities``)."""
    check_ring_dtype(config, backend.capabilities)
    if uses_fp8(config) and dit.device.type == "cuda":
        cap = torch.cuda.get_device_capability(dit.device)
        if cap < MIN_CAPABILITY:
            raise ValueError(f"FP8 needs e4m3 tensor cores (sm_89 or newer); {torch.cuda.get_device_name(dit.device)} is "
                             f"sm_{cap[0]}{cap[1]}: drop kv_dtype/linear_dtype/precision")
        if config.linear_dtype == FP8 and dit.dtype != torch.bfloat16:
            raise ValueError(f"FP8 linears on a GPU write bf16 (row-wise scaled matmuls); load the model in bf16, not {dit.dtype}")


def check_ring_dtype(config, capabilities) -> None:
    """Refuse a ring dtype (``kv_dtype``) the backend cannot read, naming the fix."""
    if capabilities.reads(kv_torch_dtype(config)):
        return
    if config.kv_dtype == FP8:
        raise ValueError(f"attention={config.attention!r} has no FP8 path: it reads a ring in {capabilities.describe_reads()}. "
                         f"With kv_dtype={FP8!r} use triton_fp8 (or torch, which dequantizes; or torch_fp8, the FP8 core's model)")
    raise ValueError(f"attention={config.attention!r} reads an e4m3 ring cache only: set kv_dtype={FP8!r} "
                     f"(or EngineConfig.with_precision('fp8')), or pick a backend that reads the model dtype (torch, triton, auto)")


def kv_torch_dtype(config) -> torch.dtype | None:
    return E4M3 if config.kv_dtype == FP8 else None


def apply_linears(config, dit) -> None:
    """Quantize the model's block linears once, in place, when asked."""
    if config.linear_dtype == FP8:
        from ...model.fp8_linear import quantize_block_linears

        quantize_block_linears(dit)
