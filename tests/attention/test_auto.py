import time

import pytest
import torch

from histream_engine.attention import auto
from histream_engine.attention.auto import AUTO_CHOICES, AutoCore, auto_choices


def sleeper(seconds, calls, name):
    def core(q, k, v):
        calls.append(name)
        time.sleep(seconds)
        return q.transpose(1, 2) * 0 + seconds
    return core


def broken(q, k, v):
    raise ValueError("this core cannot run that shape")


def inputs(device, lk=9):
    return tuple(torch.zeros(1, 2, n, 4, device=device) for n in (6, lk, lk))  # [B, H, L, D]


def test_picks_the_fastest_core_and_remembers_it(device):
    AUTO_CHOICES.clear()
    calls = []
    core = AutoCore({"slow": sleeper(0.02, calls, "slow"), "fast": sleeper(0.001, calls, "fast"), "broken": broken},
                    {"missing": "not installed"})
    out = core(*inputs(device))
    assert torch.all(out == 0.001)  # the chosen core's result
    per_core = auto.WARMUP + auto.REPEATS
    assert calls == ["slow"] * per_core + ["fast"] * (per_core + 1)
    (choice,) = AUTO_CHOICES.values()
    assert choice.core == "fast" and choice.seconds["slow"] > choice.seconds["fast"]
    assert "cannot run that shape" in choice.failed["broken"] and choice.unavailable == {"missing": "not installed"}
    calls.clear()
    core(*inputs(device))
    assert calls == ["fast"]  # measured once per shape
    core(*inputs(device, lk=12))
    assert calls.count("slow") == per_core  # another key count is another shape
    q, k, v = inputs(device)
    core(q, k.transpose(2, 3).contiguous().transpose(2, 3), v)
    assert calls.count("slow") == 2 * per_core  # and so is another layout of K
    report = auto_choices()
    assert len(report) == 3 and all(r["core"] == "fast" for r in report.values())
    assert any("k[1, 2, 9, 4]" in name and "float32" in name for name in report), list(report)


def test_no_core_can_run_the_shape(device):
    AUTO_CHOICES.clear()
    with pytest.raises(RuntimeError, match="no core could run.*cannot run that shape"):
        AutoCore({"broken": broken}, {})(*inputs(device))
    with pytest.raises(ValueError, match="at least one"):
        AutoCore({}, {"triton": "no GPU"})
