import time

import pytest
import torch

from histream_engine.attention import auto
from histream_engine.attention.auto import AUTO_CHOICES, AutoCore, auto_choices


def sleeper(seconds, calls, name):
    def core(q, k, v, lk):
        calls.append(name)
        time.sleep(seconds)
        return q.transpose(1, 2) * 0 + seconds
    return core


def broken(q, k, v, lk):
    raise ValueError("this core cannot run that shape")


def inputs(lq=6):
    return torch.zeros(1, 2, lq, 4), torch.zeros(1, 2, 12, 4), torch.zeros(1, 12, 2, 4)


def test_picks_the_fastest_core_and_remembers_it():
    AUTO_CHOICES.clear()
    calls = []
    core = AutoCore({"slow": sleeper(0.02, calls, "slow"), "fast": sleeper(0.001, calls, "fast"), "broken": broken},
                    {"missing": "not installed"})
    q, k, v = inputs()
    out = core(q, k, v, 9)
    assert torch.all(out == 0.001)  # the chosen core's result
    per_core = auto.WARMUP + auto.REPEATS
    assert calls == ["slow"] * per_core + ["fast"] * (per_core + 1)
    (choice,) = AUTO_CHOICES.values()
    assert choice.core == "fast" and choice.seconds["slow"] > choice.seconds["fast"]
    assert "cannot run that shape" in choice.failed["broken"] and choice.unavailable == {"missing": "not installed"}
    calls.clear()
    core(q, k, v, 9)
    assert calls == ["fast"]  # measured once per shape
    core(q, k, v, 12)
    assert calls.count("slow") == per_core  # another key count is another shape
    report = auto_choices()
    assert len(report) == 2 and all(r["core"] == "fast" for r in report.values())
    assert any("keys=9" in name and "float32" in name for name in report)


def test_no_core_can_run_the_shape():
    AUTO_CHOICES.clear()
    with pytest.raises(RuntimeError, match="no core could run.*cannot run that shape"):
        AutoCore({"broken": broken}, {})(*inputs(), 3)
    with pytest.raises(ValueError, match="at least one"):
        AutoCore({}, {"triton": "no GPU"})
