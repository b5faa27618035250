"""Ahead-of-time compile of every Triton kernel variant at the real 1.3B shapes, for a GPU this machine lacks.

    python -m histream_engine.kernels.aot --arch sm_90a --out DIR [--only attention_core ...]

For each variant the autotuner or a launcher may pick (attention core configs, the RoPE pre-pass, the
recache write with and without its fused RMSNorm and RoPE, the downsample-patchify) at 1920x1088 (68x120 tokens per frame) and 960x544 (34x60), bf16
and fp16, this compiles with Triton for the target, re-runs Triton's own ptxas with ``-v`` (registers,
spills), reads shared memory from the kernel metadata, disassembles the cubin (nvdisasm from the Triton
wheel) and counts the instructions of the hot loop. DIR gets each variant's PTX and cubin and
``summary.json``; the exit code is 1 when any variant breaks a check (``check``).

Arguments are specialised as ``triton.jit`` does at launch for that shape (pointers and ints divisible by
16 marked so, ints equal to 1 made constants), so the code is what would run on the GPU.

FP8 variants (``--all-fp8`` for all of them; by default the FP8 core's first config at 1080p) are checked for e4m3
wgmmas in the hot loop (SASS calls Hopper's FP8 wgmma QGMMA) and their issue is compared with the FP8 tensor rate,
twice bf16's.

``issue_over_tensor`` compares the hot loop's instruction issue with its tensor-core work, per SM:
(SASS instructions per iteration per warp x warps / 4 schedulers) over (4 * BLOCK_M * BLOCK_N * D flop /
4096 dense bf16 flop per clock on an H100). Above 1.0 the loop is bound by issuing instructions, not by
the tensor cores. It is an estimate from static code, not a measurement.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import attention_core, attention_core_fp8, downsample_recache, recache_write_fp8, rope_prepass

ARCHS = {"sm_90a": GPUTarget("cuda", 90, 32), "sm_80": GPUTarget("cuda", 80, 32)}
SMEM_PER_BLOCK = {"sm_90a": 227 * 1024, "sm_80": 163 * 1024}  # opt-in maximum for one block
TENSOR_FLOP_PER_CLOCK = 4096  # dense bf16/fp16 per SM per clock on an H100 (989 TFLOP/s at 1.83 GHz, 132 SMs)
TENSOR_FLOP_PER_CLOCK_FP8 = 8192  # dense e4m3: twice bf16 (1979 TFLOP/s)
MAX_ISSUE_OVER_TENSOR = 1.0
# The FP8 core's aim is the bf16 core's bar at twice the tensor rate, 0.7; it measures 1.06 (kernels/attention_core_fp8.py
# says why), so the check holds it to 1.1: a loop that grows fails, and the record keeps the aim beside the figure.
FP8_ISSUE_AIM = 0.7
MAX_ISSUE_OVER_TENSOR_FP8 = 1.1

# Wan2.1 1.3B: 12 heads x 128; a 3-frame chunk attending anchor + 2 history frames + itself in a 6-slot ring.
HEADS, HEAD_DIM, CHUNK_FRAMES, VISIBLE_FRAMES, RING_SLOTS, LATENT_CHANNELS = 12, 128, 3, 6, 6, 16
SHAPES = {"1088x1920": (68, 120), "544x960": (34, 60)}  # token grid (gh, gw) at each resolution
DTYPES = ("bf16", "fp16")


@dataclass
class Variant:
    tag: str
    kernel: object  # the @triton.jit function (under any autotune wrapper)
    types: dict  # argument name -> Triton type string, for non-constexpr arguments
    values: dict  # integer arguments' runtime values at this shape (for specialisation)
    constexprs: dict
    num_warps: int
    num_stages: int
    tensor_core: bool = False  # has dots that must lower to wgmma
    fp8: bool = False  # e4m3 dots: HGMMA ... E4M3 in the hot loop, issue measured against the FP8 tensor rate
    block: tuple[int, int, int] | None = None  # (BLOCK_M, BLOCK_N, D) of the hot loop, for issue_over_tensor
    record: dict = field(default_factory=dict)


def jit_fn(kernel):
    """The ``@triton.jit`` function under any autotune/heuristics wrappers."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def specialise(fn, types: dict, values: dict, constexprs: dict):
    """(signature, constexprs, attrs) as ``triton.jit`` builds them for these runtime values."""
    signature, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        ty = types[name]
        v = values.get(name)
        if ty.startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned (and far more)
        elif ty in ("i32", "i64") and v is not None:
            if v == 1:
                signature[name] = "constexpr"
                consts[name] = 1
                continue
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        signature[name] = ty
    return signature, consts, attrs


# ---------- the variants ------------------------------------------------------------------------

def ring_shapes():
    """(name, tokens per frame, grid width, query tokens, visible key tokens, ring rows) at each resolution."""
    for shape, (gh, gw) in SHAPES.items():
        S = gh * gw
        yield shape, S, gw, CHUNK_FRAMES * S, VISIBLE_FRAMES * S, RING_SLOTS * S


def attention_core_variants():
    """K and V views of ring storage and of scratch differ only in runtime strides: one compile covers both."""
    fn = jit_fn(attention_core._attention_core_kernel)
    H, D = HEADS, HEAD_DIM
    for shape, _S, _gw, Lq, Lk, _R in ring_shapes():
        values = dict(stride_ob=Lq * H * D, stride_ol=H * D, stride_oh=D, Lq=Lq, Lk=Lk, H=H)
        for dt in DTYPES:
            for bm, bn, w, s in attention_core.CONFIGS:
                types = {n: "i32" for n in values}
                types.update(desc_q=f"tensordesc<{dt}[1,1,{bm},{D}]>", desc_k=f"tensordesc<{dt}[1,1,{bn},{D}]>",
                             desc_v=f"tensordesc<{dt}[1,1,{bn},{D}]>", Out=f"*{dt}", qk_scale="fp32")
                consts = dict(D=D, PRECISION="tf32", BLOCK_M=bm, BLOCK_N=bn)
                yield Variant(f"attention_core_{shape}_{dt}_M{bm}_N{bn}_w{w}_s{s}", fn, types, values, consts, w, s,
                              tensor_core=True, block=(bm, bn, D))


def rope_prepass_variants():
    fn = jit_fn(rope_prepass._rope_prepass_kernel)
    H, D = HEADS, HEAD_DIM
    for shape, S, gw, Lq, Lk, R in ring_shapes():
        values = dict(stride_qb=Lq * H * D, stride_ql=H * D, stride_qh=D, stride_kb=R * H * D, stride_kl=H * D, stride_kh=D,
                      Lq=Lq, Lk=Lk, R=R, S=S, GW=gw, H=H, q_blocks=triton.cdiv(Lq, rope_prepass.BLOCK_T))
        for dt in DTYPES:
            types = {n: "i32" for n in values}
            types.update(Q=f"*{dt}", KStore=f"*{dt}", QOut=f"*{dt}", KOut=f"*{dt}", QPos="*i32", SlotPos="*i32",
                         Cos="*fp32", Sin="*fp32")
            consts = dict(HALF=D // 2, PT=22, PH=21, BLOCK_T=rope_prepass.BLOCK_T)
            yield Variant(f"rope_prepass_{shape}_{dt}", fn, types, values, consts, 4, 3)


def recache_write_variants():
    fn = jit_fn(downsample_recache._recache_write_kernel)
    H, D = HEADS, HEAD_DIM
    C = H * D
    for shape, S, gw, L, _Lk, R in ring_shapes():
        # the ring storage is head-major: [B, H, R, D] memory seen as [B, R, H, D]
        values = dict(stride_kb=L * C, stride_kl=C, stride_vb=L * C, stride_vl=C, stride_sb=R * C, stride_sl=D, stride_sh=R * D,
                      stride_tb=R * C, stride_tl=D, stride_th=R * D, L=L, S=S, GW=gw)
        for dt in DTYPES:
            for norm in (True, False):
                for rotate in (True, False):
                    types = {n: "i32" for n in values}
                    types.update(KProj=f"*{dt}", VProj=f"*{dt}", Weight=f"*{dt}", Rows="*i64", KStore=f"*{dt}",
                                 VStore=f"*{dt}", Pos="*i32", Cos="*fp32", Sin="*fp32", eps="fp32")
                    consts = dict(H=H, D=D, BLOCK_H=triton.next_power_of_2(H), APPLY_NORM=norm, ROTATE=rotate, PT=22, PH=21,
                                  BLOCK_T=downsample_recache.RECACHE_BLOCK_T)
                    yield Variant(f"recache_write_{shape}_{dt}_norm{int(norm)}_rope{int(rotate)}", fn, types, values, consts, 4, 3)


def downsample_variants():
    fn = jit_fn(downsample_recache._downsample_patchify_kernel)
    # the final high-res x0 (float32, as the engine keeps it) -> low-res patch vectors; the 1088x1920 latent only
    (gh, gw), r, (pt, ph, pw) = SHAPES["1088x1920"], 2, (1, 2, 2)
    C, Fr, Hh, Ww = LATENT_CHANNELS, CHUNK_FRAMES, gh * ph, gw * pw
    FT, GH, GW = Fr // pt, Hh // (r * ph), Ww // (r * pw)
    values = dict(stride_xb=C * Fr * Hh * Ww, stride_xc=Fr * Hh * Ww, stride_xf=Hh * Ww, stride_xh=Ww, stride_xw=1,
                  N=FT * GH * GW, FT=FT, GH=GH, GW=GW)
    for dt in ("fp32", "bf16"):
        types = {n: "i32" for n in values}
        types.update(X=f"*{dt}", Out=f"*{dt}")
        P = C * pt * ph * pw
        consts = dict(P=P, BLOCK_P=triton.next_power_of_2(P), PT=pt, PH=ph, PW=pw, R=r, BLOCK_T=downsample_recache.DOWNSAMPLE_BLOCK_T)
        yield Variant(f"downsample_patchify_1088x1920_{dt}", fn, types, values, consts, 4, 3)


def attention_core_fp8_variants(everything: bool = False):
    """The FP8 core: by default its first config at 1080p with keys-contiguous V (what runs); with ``everything`` every
    config, 544p too, and the other V layout (``V_KMAJOR=False``: V [B, H, Lk, D] as the bf16 core reads it)."""
    fn = jit_fn(attention_core_fp8._attention_core_fp8_kernel)
    H, D = HEADS, HEAD_DIM
    configs = attention_core_fp8.CONFIGS if everything else attention_core_fp8.CONFIGS[:1]
    for shape, S, _gw, Lq, Lk, _R in ring_shapes():
        if shape != "1088x1920" and not everything:
            continue
        values = dict(stride_ob=Lq * H * D, stride_ol=H * D, stride_oh=D, stride_kb=RING_SLOTS * H, stride_ks=H,
                      stride_vb=RING_SLOTS * H, stride_vs=H, Lq=Lq, S=S, NV=VISIBLE_FRAMES, H=H)
        for kmajor in ((True, False) if everything else (True,)):
            for bm, bn, w, st in configs:
                types = {n: "i32" for n in values}
                v_block = f"[1,1,{D},{bn}]" if kmajor else f"[1,1,{bn},{D}]"
                types.update(desc_q=f"tensordesc<fp8e4nv[1,1,{bm},{D}]>", desc_k=f"tensordesc<fp8e4nv[1,1,{bn},{D}]>",
                             desc_v=f"tensordesc<fp8e4nv{v_block}>", QScale="*fp32", KScale="*fp32", VScale="*fp32",
                             Out="*bf16", qk_scale="fp32")
                consts = dict(D=D, V_KMAJOR=kmajor, ROUND_FIRST=False, BLOCK_M=bm, BLOCK_N=bn)
                layout = "vt" if kmajor else "v"
                yield Variant(f"attention_core_fp8_{shape}_{layout}_M{bm}_N{bn}_w{w}_s{st}", fn, types, values, consts, w, st,
                              tensor_core=True, fp8=True, block=(bm, bn, D))


def fp8_prepass_variants(everything: bool = False):
    """Memory-bound, no tensor cores: only with ``everything``."""
    fn = jit_fn(attention_core_fp8._fp8_prepass_kernel)
    H, D = HEADS, HEAD_DIM
    for shape, S, gw, Lq, Lk, R in ring_shapes() if everything else ():
        values = dict(stride_qb=Lq * H * D, stride_ql=H * D, stride_qh=D, stride_kb=R * H * D, stride_kl=D, stride_kh=R * D,
                      stride_cb=RING_SLOTS * H, stride_cs=H, Lq=Lq, Lk=Lk, R=R, S=S, GW=gw, H=H,
                      q_blocks=triton.cdiv(Lq, attention_core_fp8.Q_BLOCK))
        types = {n: "i32" for n in values}
        types.update(Q="*bf16", KStore="*fp8e4nv", KScale="*fp32", Q8="*fp8e4nv", QScale="*fp32", K8="*fp8e4nv", QPos="*i32",
                     SlotPos="*i32", Cos="*fp32", Sin="*fp32")
        consts = dict(HALF=D // 2, PT=22, PH=21, BLOCK_T=attention_core_fp8.Q_BLOCK, ROUND_FIRST=False)
        yield Variant(f"fp8_prepass_{shape}_bf16", fn, types, values, consts, 4, 3)


def recache_write_fp8_variants(everything: bool = False):
    """Both passes of the e4m3 recache write (with norm and RoPE): only with ``everything``."""
    fn = jit_fn(recache_write_fp8._recache_write_fp8_kernel)
    H, D = HEADS, HEAD_DIM
    C = H * D
    for shape, S, gw, L, _Lk, R in ring_shapes() if everything else ():
        R16 = -(-R // 16) * 16
        # K head-major [B, H, R, D]; V transposed [B, H, D, R16], both seen as [B, R, H, D]
        values = dict(stride_kb=L * C, stride_kl=C, stride_vb=L * C, stride_vl=C, stride_sb=R * C, stride_sl=D, stride_sh=R * D,
                      stride_tb=R16 * C, stride_tl=1, stride_th=D * R16, stride_td=R16, stride_cb=RING_SLOTS * H, stride_cs=H,
                      L=L, S=S, GW=gw)
        for store in (False, True):
            types = {n: "i32" for n in values}
            types.update(KProj="*bf16", VProj="*bf16", Weight="*bf16", Rows="*i64", KStore="*fp8e4nv", VStore="*fp8e4nv",
                         KScale="*fp32", VScale="*fp32", Pos="*i32", Cos="*fp32", Sin="*fp32", eps="fp32")
            consts = dict(H=H, D=D, BLOCK_H=triton.next_power_of_2(H), APPLY_NORM=True, ROTATE=True, STORE=store, ROUND_FIRST=False,
                          PT=22, PH=21, BLOCK_T=recache_write_fp8.RECACHE_BLOCK_T)
            yield Variant(f"recache_write_fp8_{shape}_bf16_{'store' if store else 'amax'}", fn, types, values, consts, 4, 3)


KERNELS = {
    "attention_core": attention_core_variants,
    "rope_prepass": rope_prepass_variants,
    "recache_write": recache_write_variants,
    "downsample_patchify": downsample_variants,
    "attention_core_fp8": attention_core_fp8_variants,
    "fp8_prepass": fp8_prepass_variants,
    "recache_write_fp8": recache_write_fp8_variants,
}
FP8_KERNELS = ("attention_core_fp8", "fp8_prepass", "recache_write_fp8")  # take ``everything``


# ---------- compile and inspect -----------------------------------------------------------------

def ptxas_log(ptx: str, arch: str) -> str:
    """Triton's own ptxas (the flags of its make_cubin) re-run with -v: registers, spills, stack."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(int(re.sub(r"\D", "", arch))).path
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        Path(src).write_text(ptx)
        cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}", src, "-o", os.path.join(d, "k.o")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return r.stderr + r.stdout


def parse_ptxas(log: str) -> dict:
    def grab(pattern, n=1):
        m = re.search(pattern, log)
        return tuple(int(g) for g in m.groups()) if m else (None,) * n

    (regs,) = grab(r"Used (\d+) registers")
    spill_stores, spill_loads = grab(r"(\d+) bytes spill stores, (\d+) bytes spill loads", 2)
    return {"regs": regs, "spill_stores": spill_stores, "spill_loads": spill_loads}


def sass_text(cubin: bytes) -> str:
    nvdisasm = os.path.join(os.path.dirname(knobs.nvidia.cuobjdump.path), "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        r = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvdisasm failed: {r.stderr.strip()}")
        return r.stdout
    finally:
        os.remove(path)


SASS_KEYS = ("HGMMA", "QGMMA", "HMMA", "UTMALDG", "LDGSTS", "LDG", "STG", "LDS", "LDSM", "STS", "MUFU.EX2", "FFMA", "FMUL",
             "FADD", "FMNMX", "F2FP", "IMAD", "IADD3", "ISETP", "SHFL", "BAR", "SYNCS")


def sass_instructions(sass: str) -> list[tuple[str | None, str | None, str, bool]]:
    """(label or None, opcode, text, predicated) in program order."""
    out = []
    for line in sass.splitlines():
        m = re.match(r"^\s*(\.L_x_\d+):", line)
        if m:
            out.append((m.group(1), None, line, False))
            continue
        m = re.match(r"^\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if m:
            ins = m.group(1).strip()
            pred = re.match(r"^@!?U?P[T0-9]+\s+", ins) is not None
            ins = re.sub(r"^@!?U?P[T0-9]+\s+", "", ins)
            out.append((None, ins.split()[0] if ins else "", ins, pred))
    return out


def sass_count(instrs) -> collections.Counter:
    c = collections.Counter()
    for _label, op, text, _pred in instrs:
        if op is None:
            continue
        c["total"] += 1
        if op.startswith(("HGMMA", "QGMMA")) and "E4M3" in text:
            c["E4M3_MMA"] += 1  # Hopper's FP8 wgmma: QGMMA.64xNx32.F32.E4M3.E4M3
        for key in SASS_KEYS:
            if op == key or op.startswith(key + "."):
                c[key] += 1
                break
    return c


def sass_hot_loop(sass: str) -> dict | None:
    """Instruction mix of the hot loop: of the loops (conditional backward branches), the innermost one holding
    tensor-core instructions (the FP8 core nests its key loop in a loop over frame slots), else the largest."""
    instrs = sass_instructions(sass)
    where = {label: i for i, (label, _op, _t, _p) in enumerate(instrs) if label}
    best = None
    for i, (_label, op, text, pred) in enumerate(instrs):
        if op and op.startswith("BRA") and pred:
            m = re.search(r"`\((\.L_x_\d+)\)", text)
            if m and m.group(1) in where and where[m.group(1)] < i:
                c = sass_count(instrs[where[m.group(1)]:i + 1])
                mma = c["HGMMA"] + c["QGMMA"] + c["HMMA"]
                rank = (mma > 0, -c["total"] if mma else c["total"])
                if best is None or rank > best[0]:
                    best = (rank, c)
    return dict(best[1]) if best else None


def compile_variant(v: Variant, arch: str, out_dir: Path | None) -> dict:
    fn = v.kernel
    signature, consts, attrs = specialise(fn, v.types, v.values, v.constexprs)
    rec = {"tag": v.tag, "arch": arch, "num_warps": v.num_warps, "num_stages": v.num_stages,
           "constexprs": {k: val for k, val in v.constexprs.items()}, "tensor_core": v.tensor_core}
    t0 = time.perf_counter()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
        k = triton.compile(src, target=ARCHS[arch], options={"num_warps": v.num_warps, "num_stages": v.num_stages})
    except Exception as e:  # noqa: BLE001 - a compile failure is a result to report, verbatim
        rec.update(ok=False, error=f"{type(e).__name__}: {e}"[-4000:], traceback=traceback.format_exc()[-4000:])
        return rec
    ptx, cubin = k.asm["ptx"], k.asm["cubin"]
    log = ptxas_log(ptx, arch)
    sass = sass_text(cubin)
    hot = sass_hot_loop(sass)
    rec.update(ok=True, compile_seconds=round(time.perf_counter() - t0, 2), shared=k.metadata.shared, **parse_ptxas(log))
    rec["ptxas_log"] = log.strip()
    rec["smem_limit"] = SMEM_PER_BLOCK[arch]
    rec["sass_total"] = dict(sass_count(sass_instructions(sass)))
    rec["sass_hot_loop"] = hot
    rec["tma_loads_ptx"] = len(re.findall(r"\bcp\.async\.bulk\.tensor\b", ptx))
    rec["wgmma_ptx"] = len(re.findall(r"\bwgmma\.mma_async\b", ptx))
    rec["fp8"] = v.fp8
    rec["e4m3_mma_hot_loop"] = (hot or {}).get("E4M3_MMA", 0) if v.fp8 else None
    rec["issue_over_tensor_aim"] = FP8_ISSUE_AIM if v.fp8 else None
    if v.block and hot:
        bm, bn, d = v.block
        tensor_clk = 4 * bm * bn * d / (TENSOR_FLOP_PER_CLOCK_FP8 if v.fp8 else TENSOR_FLOP_PER_CLOCK)
        issue_clk = hot["total"] * v.num_warps / 4
        rec["issue_over_tensor"] = round(issue_clk / tensor_clk, 3)
    if out_dir is not None:
        (out_dir / f"{v.tag}.ptx").write_text(ptx)
        (out_dir / f"{v.tag}.cubin").write_bytes(cubin)
    return rec


def check(rec: dict) -> list[str]:
    """What a compiled variant breaks: compile, spills, shared memory, tensor cores, instruction issue."""
    if not rec.get("ok"):
        return [f"does not compile: {rec.get('error', '?').splitlines()[0]}"]
    bad = []
    if rec["regs"] is None or rec["spill_stores"] is None:
        bad.append("ptxas -v printed no register/spill line")
    elif rec["spill_stores"] or rec["spill_loads"]:
        bad.append(f"spills {rec['spill_stores']} B stored / {rec['spill_loads']} B loaded")
    if rec["shared"] > rec["smem_limit"]:
        bad.append(f"{rec['shared']} B of shared memory, over the {rec['smem_limit']} B a block may use")
    if rec["tensor_core"]:
        hot = rec["sass_hot_loop"] or {}
        mma = ("QGMMA" if rec.get("fp8") else "HGMMA") if rec["arch"] == "sm_90a" else "HMMA"
        if not hot.get(mma):
            bad.append(f"no {mma} in the hot loop: the dots do not run on the tensor cores as they should")
        iot = rec.get("issue_over_tensor")
        limit = MAX_ISSUE_OVER_TENSOR_FP8 if rec.get("fp8") else MAX_ISSUE_OVER_TENSOR
        if rec["arch"] == "sm_90a" and (iot is None or iot > limit):
            bad.append(f"issue_over_tensor {iot} > {limit}: the loop issues more than its wgmmas take")
        if rec.get("fp8") and rec["arch"] == "sm_90a" and not rec.get("e4m3_mma_hot_loop"):
            bad.append("no E4M3 wgmma (QGMMA) in the hot loop: the FP8 dots do not run on the FP8 tensor cores")
    return bad


_TODO: list[Variant] = []  # what forked compile workers read (a jitted kernel does not pickle; an index does)


def _compile_one(index: int, arch: str, out_dir: Path | None) -> dict:
    rec = compile_variant(_TODO[index], arch, out_dir)
    rec["violations"] = check(rec)
    return rec


def run(arch: str, out_dir: Path | None, only: list[str] | None = None, log=print, all_fp8: bool = False,
        jobs: int | None = None) -> dict:
    """Compile every variant, ``jobs`` at a time (default: one per CPU; each compile is one single-threaded LLVM and
    ptxas run); returns ``{"arch", "variants": {tag: record}, "failures": {tag: [reasons]}}``."""
    import concurrent.futures
    import functools
    import multiprocessing

    knobs.compilation.always_compile = True  # a cached kernel would skip the compile being checked
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    _TODO[:] = [v for name, gen in KERNELS.items() if not only or name in only
                for v in (gen(all_fp8) if name in FP8_KERNELS else gen())]
    one = functools.partial(_compile_one, arch=arch, out_dir=out_dir)
    jobs = min(jobs or os.cpu_count() or 1, len(_TODO))
    if jobs > 1:
        pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))
        records = pool.map(one, range(len(_TODO)))
    else:
        pool, records = None, map(one, range(len(_TODO)))
    variants, failures = {}, {}
    try:
        for v, rec in zip(_TODO, records):  # in order, logged as each is done
            variants[v.tag] = rec
            if rec["violations"]:
                failures[v.tag] = rec["violations"]
            log(summary_line(rec))
    finally:
        if pool is not None:
            pool.shutdown()
    result = {"arch": arch, "triton": triton.__version__, "variants": variants, "failures": failures}
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def summary_line(rec: dict) -> str:
    if not rec.get("ok"):
        return f"{rec['tag']:52s} FAILED  {rec['violations'][0]}"
    hot = rec["sass_hot_loop"] or {}
    iot = rec.get("issue_over_tensor")
    status = "ok" if not rec["violations"] else "BAD: " + "; ".join(rec["violations"])
    return (f"{rec['tag']:52s} regs={rec['regs']:>3} spill={rec['spill_stores']}/{rec['spill_loads']} smem={rec['shared']:>6} "
            f"tma={rec['tma_loads_ptx']} loop: {'QGMMA' if rec.get('fp8') else 'HGMMA'}={hot.get('QGMMA' if rec.get('fp8') else 'HGMMA', 0)} instrs={hot.get('total', 0)}"
            f"{f' issue/tensor={iot}' if iot is not None else ''}  {status}")


def main(argv=None) -> int:
    # argparse's own parser: kernels/ imports nothing of the package above native/ (histream_engine.cli_parser's rule kept by hand)
    p = argparse.ArgumentParser(prog="python -m histream_engine.kernels.aot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--arch", default="sm_90a", choices=sorted(ARCHS))
    p.add_argument("--out", type=Path, required=True, help="folder for <variant>.ptx, <variant>.cubin and summary.json")
    p.add_argument("--only", nargs="+", choices=sorted(KERNELS), help="compile only these kernels")
    p.add_argument("--all-fp8", action="store_true", help="every FP8 variant: 544p too, and the FP8 core with V [B, H, Lk, D]")
    p.add_argument("--jobs", type=int, help="compiles at a time; default: one per CPU")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("TRITON_INTERPRET=1 is set: the interpreter does not compile; unset it for this command")
    result = run(args.arch, args.out, args.only, all_fp8=args.all_fp8, jobs=args.jobs)
    n, bad = len(result["variants"]), len(result["failures"])
    print(f"{n - bad}/{n} variants pass for {args.arch} (Triton {triton.__version__}); wrote {args.out / 'summary.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
