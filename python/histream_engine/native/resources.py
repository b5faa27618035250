"""What the compiled kernels in ``histream_engine._C`` use, read off the binary with ``cuobjdump`` (no GPU needed).

    python -m histream_engine.native.resources [--json]

Per architecture and kernel: registers, stack, local memory (spills), static and dynamic shared memory, and for the
attention core the tensor-core and load instructions in its SASS (HMMA, LDSM, LDGSTS). ``tests/native/test_resources.py``
asserts on it in CI. cuobjdump comes from the CUDA toolkit or, where the toolkit has none, Triton's wheel.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import extension

KERNELS = ("attention_core", "rope_prepass", "recache_write", "downsample_patchify")
# Largest dynamic shared memory one block may opt into, per architecture (CUDA programming guide, compute capabilities).
SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024, "sm_90a": 227 * 1024}
SASS_OPS = ("HMMA", "LDSM", "LDGSTS", "MUFU.EX2")


@dataclass
class KernelUsage:
    arch: str
    kernel: str  # one of KERNELS
    dtype: str  # fp32 / fp16 / bf16
    head_dim: int | None  # the attention core's template head dim
    registers: int
    stack: int
    local: int
    static_shared: int
    dynamic_shared: int  # what the launcher asks for (attention core only)
    sass: dict[str, int] = field(default_factory=dict)  # instruction counts (attention core only)
    instructions: int = 0


def cuobjdump() -> str:
    """Path of cuobjdump: CUDA_HOME, PATH, then Triton's bundled copy."""
    candidates = [Path(os.environ[v]) / "bin" / "cuobjdump" for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    candidates.append(Path(shutil.which("cuobjdump") or "/nonexistent"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise FileNotFoundError("cuobjdump was not found: install the CUDA toolkit's cuobjdump, or triton (which bundles one)")


def _describe(mangled: str) -> tuple[str, str, int | None] | None:
    kernel = next((k for k in KERNELS if f"{k}_kernel" in mangled), None)
    if kernel is None:
        return None
    dtype = "bf16" if "__nv_bfloat16" in mangled else "fp16" if "__half" in mangled else "fp32"
    dim = re.search(r"Li(\d+)EE", mangled)
    return kernel, dtype, int(dim.group(1)) if dim else None


_INSTRUCTION = re.compile(r"\s+/\*[0-9a-f]{4,}\*/")
_SASS_OP = re.compile(r"\b(" + "|".join(re.escape(op) for op in SASS_OPS) + r")\b")


def _sass_counts(tool: str, library: str, arch: str) -> dict[str, tuple[dict[str, int], int]]:
    text = subprocess.run([tool, "-sass", "-arch", arch, library], capture_output=True, text=True, check=True).stdout
    out, name, counts, total = {}, None, {}, 0
    for line in text.splitlines() + ["Function : <end>"]:
        if "Function :" in line:
            if name is not None:
                out[name] = (counts, total)
            name, counts, total = line.split("Function :")[1].strip(), {op: 0 for op in SASS_OPS}, 0
        elif _INSTRUCTION.match(line):
            total += 1
            for op in set(_SASS_OP.findall(line)):  # instructions naming an op, as one search per op counted them
                counts[op] += 1
    return out


def usage() -> list[KernelUsage]:
    """Every kernel of every architecture in the built extension."""
    C = extension()
    tool, library = cuobjdump(), C.__file__
    text = subprocess.run([tool, "--dump-resource-usage", library], capture_output=True, text=True, check=True).stdout
    rows, arch, sass = [], None, {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"arch = (sm_\w+)", line):
            arch = m.group(1)  # named again for each of the library's code objects: the SASS is read once per arch
            if arch not in sass:
                sass[arch] = _sass_counts(tool, library, arch)
        elif line.strip().startswith("Function ") and arch is not None:
            mangled = line.strip()[len("Function "):].rstrip(":")
            described = _describe(mangled)
            if described is None:
                continue
            kernel, dtype, dim = described
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", lines[i + 1]))
            counts, total = sass[arch].get(mangled, ({}, 0))
            rows.append(KernelUsage(
                arch, kernel, dtype, dim, int(fields["REG"]), int(fields["STACK"]), int(fields["LOCAL"]), int(fields["SHARED"]),
                C.attention_smem_bytes(dim) if kernel == "attention_core" else 0,
                counts if kernel == "attention_core" else {}, total))
    return rows


def markdown(rows: list[KernelUsage]) -> str:
    head = "| arch | kernel | dtype | D | regs | spills (local) | stack | shared (static + dynamic) | HMMA | LDSM | LDGSTS | SASS |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    for r in sorted(rows, key=lambda r: (r.arch, KERNELS.index(r.kernel), r.dtype, r.head_dim or 0)):
        s = r.sass
        head += (f"| {r.arch} | {r.kernel} | {r.dtype} | {r.head_dim or ''} | {r.registers} | {r.local} | {r.stack} | "
                 f"{r.static_shared + r.dynamic_shared:,} | {s.get('HMMA', '')} | {s.get('LDSM', '')} | {s.get('LDGSTS', '')} | "
                 f"{r.instructions} |\n")
    return head


def main(argv: list[str] | None = None) -> int:
    # argparse's own parser: native/ sits below the command line's (histream_engine.cli_parser), with its rules kept by hand
    p = argparse.ArgumentParser(prog="python -m histream_engine.native.resources", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a markdown table")
    args = p.parse_args(argv)
    rows = usage()
    print(json.dumps([asdict(r) for r in rows], indent=2) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
