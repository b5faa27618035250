"""Static evidence for Hopper, no GPU needed: every kernel variant compiles for sm_90a with no spills, in shared
memory, with its dots on wgmma and a hot loop that issues faster than its tensor cores work (``kernels.aot``)."""

import json
import os
import subprocess
import sys

import pytest

from histream_engine.kernels import aot, attention_core


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter does not compile
    env["TRITON_CACHE_DIR"] = str(out / "cache")
    proc = subprocess.run([sys.executable, "-m", "histream_engine.kernels.aot", "--arch", "sm_90a", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    return proc, out, json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None


def test_every_variant_passes_on_sm90a(summary):
    proc, out, result = summary
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert result["failures"] == {}
    variants = result["variants"]
    n_shapes, n_dtypes = len(aot.SHAPES), len(aot.DTYPES)
    expected = {
        "attention_core": n_shapes * n_dtypes * len(attention_core.CONFIGS),
        "rope_prepass": n_shapes * n_dtypes,
        "recache_write": n_shapes * n_dtypes * 4,
        "downsample_patchify": 2,
    }
    for kernel, count in expected.items():
        assert sum(tag.startswith(kernel + "_") for tag in variants) == count, kernel
    for tag, rec in variants.items():
        assert rec["ok"] and rec["spill_stores"] == 0 and rec["spill_loads"] == 0, tag
        assert rec["shared"] <= 227 * 1024, tag
        assert (out / f"{tag}.ptx").stat().st_size > 0 and (out / f"{tag}.cubin").stat().st_size > 0


def test_attention_core_runs_on_wgmma_and_tma(summary):
    _proc, _out, result = summary
    cores = {tag: rec for tag, rec in result["variants"].items() if tag.startswith("attention_core_")}
    assert cores
    for tag, rec in cores.items():
        hot = rec["sass_hot_loop"]
        assert hot["HGMMA"] > 0 and rec["wgmma_ptx"] > 0, tag
        assert rec["tma_loads_ptx"] > 0, tag  # Q, K and V arrive as TMA tiles
        assert 0 < rec["issue_over_tensor"] <= aot.MAX_ISSUE_OVER_TENSOR, tag


def test_check_flags_each_kind_of_violation():
    good = {"ok": True, "regs": 128, "spill_stores": 0, "spill_loads": 0, "shared": 1000, "smem_limit": 227 * 1024,
            "tensor_core": True, "arch": "sm_90a", "sass_hot_loop": {"HGMMA": 8, "total": 300}, "issue_over_tensor": 0.5}
    assert aot.check(good) == []
    cases = {
        "spills": dict(spill_stores=8, spill_loads=8),
        "shared memory": dict(shared=300 * 1024),
        "no HGMMA": dict(sass_hot_loop={"HMMA": 8, "total": 300}),
        "issue_over_tensor": dict(issue_over_tensor=1.4),
        "register/spill line": dict(regs=None, spill_stores=None),
    }
    for words, change in cases.items():
        bad = aot.check({**good, **change})
        assert len(bad) == 1 and words in bad[0], (words, bad)
    assert "does not compile" in aot.check({"ok": False, "error": "CompilationError: boom\nmore"})[0]
