"""Kernel, attention, runtime and native tests build their inputs on one device: the session fixture ``device``
(tests/conftest.py: the GPU where there is one, kernels compiled; else the CPU, kernels in Triton's interpreter). Read
from the source with ``ast``, so that a test building CPU tensors cannot pass here and fail on a GPU (the GPU suite's
``tests`` step runs these folders there, docs/gpu-suite.md).

The rule, for every ``.py`` file under tests/kernels, tests/attention, tests/runtime and tests/native:

1. Every construction takes its device from the fixture. A construction is
   - a call to one of torch's tensor factories (``FACTORIES``) or ``torch.Generator``: it passes ``device=``;
   - a call to anything whose signature has a ``device`` parameter (a helper in the file, ``random_dit``, ``RingView``,
     ``torch.nn.Linear``, ...): it passes that parameter, by keyword or by position;
   - a call to an ``nn.Module`` class without such a parameter (``RMSNorm``): ``.to(device)`` in the same expression;
   - ``torch.from_numpy``: ``.to(device)`` in the same expression.
   "From the fixture" is the name ``device`` bound as a parameter of an enclosing function (the fixture itself in a
   test, or a helper's parameter the test passes it through), or an attribute ``.device`` (the device of something
   already built on it).
2. No device is written down: no ``torch.device(...)`` call, no ``.cuda()``, no ``device=`` or ``.to(...)`` with
   anything but the above, no ``device`` parameter with a default, no ``parametrize`` over ``device``, and no fixture
   that builds on the CPU (``CPU_FIXTURES``: ``tiny_dit``, whose device twin is ``device_dit``).
3. A construction that must stay on one device on purpose (a host-side float64 table, the CPU-tensor refusal, the
   host emulation of a CUDA kernel, a CUDA-only script) says so: ``# fixed-device: <why>`` on the line where it starts,
   or alone on the line above, exempts what starts on that line. A marker without a reason is itself a violation.
   ``grep -rn "fixed-device:" tests`` lists them.

The checker runs on planted violations too, so a rule that could never fail is caught."""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
FOLDERS = ("kernels", "attention", "runtime", "native")
FACTORIES = {getattr(torch, n) for n in (
    "randn", "rand", "randint", "randperm", "zeros", "ones", "empty", "empty_strided", "full", "arange", "linspace",
    "logspace", "eye", "tensor", "as_tensor", "Generator")}
MOVED_ONLY = {torch.from_numpy}  # no device parameter: built on the CPU, so moved at once
CPU_FIXTURES = {"tiny_dit": "device_dit"}  # conftest fixtures that build on the CPU (for tests/model): their twins
MARKER = re.compile(r"#\s*fixed-device:(.*)$")
RESOLVABLE = ("torch", "histream_engine", "conftest")  # modules the checker imports to read signatures
BUILDER_MODULES = ("histream_engine", "conftest")  # functions from these with a device parameter build on it


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def markers(source: str) -> dict[int, str]:
    """Line -> the reason of its ``# fixed-device:`` marker; a marker alone on its line covers the next line too."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and (m := MARKER.search(tok.string)):
            row = tok.start[0]
            found[row] = m.group(1).strip()
            if not tok.line[: tok.start[1]].strip():
                found[row + 1] = m.group(1).strip()
    return found


def _dotted(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _imports(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, attribute or None) for the file's imports of RESOLVABLE modules."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in RESOLVABLE:
                    top = a.name.split(".")[0]  # `import a.b` binds a; `import a.b as c` binds c to a.b
                    names[a.asname or top] = (a.name if a.asname else top, None)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in RESOLVABLE:
                for a in node.names:
                    names[a.asname or a.name] = (node.module, a.name)
    return names


def _resolve(func: ast.expr, imports: dict[str, tuple[str, str | None]]):
    """The object a call's callee names, where it is reached through an import of a RESOLVABLE module; else None."""
    path = _dotted(func)
    if path is None or path[0] not in imports:
        return None
    module, attr = imports[path[0]]
    try:
        obj = importlib.import_module(module)
        if attr is not None:
            obj = getattr(obj, attr) if hasattr(obj, attr) else importlib.import_module(f"{module}.{attr}")
        for part in path[1:]:
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def _device_position(obj) -> int | None | bool:
    """Where ``device`` binds positionally in obj's signature (None: keyword only), or False if it has none."""
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return False
    for i, p in enumerate(params):
        if p.name == "device":
            return i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else None
    return False


def _local_device_position(fn: ast.FunctionDef) -> int | None | bool:
    positional = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if "device" in positional:
        return positional.index("device")
    return None if any(a.arg == "device" for a in fn.args.kwonlyargs) else False


class Checker(ast.NodeVisitor):
    def __init__(self, path: str, source: str):
        self.path, self.source = path, source
        self.tree = ast.parse(source)
        self.marks = markers(source)
        self.imports = _imports(self.tree)
        self.local = {n.name: n for n in ast.walk(self.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        self.parents = {c: p for p in ast.walk(self.tree) for c in ast.iter_child_nodes(p)}
        self.scopes: list[set[str]] = []  # the parameters of each enclosing function
        self.violations: list[Violation] = []
        self.constructions = 0  # constructions seen (checked or exempted): guards the checker's reach

    def run(self) -> list[Violation]:
        for line, reason in self.marks.items():
            if not reason:
                self.violations.append(Violation(self.path, line, "a fixed-device marker without a reason: say why"))
        self.visit(self.tree)
        return sorted(set(self.violations), key=lambda v: v.line)

    def flag(self, node: ast.AST, what: str) -> None:
        if node.lineno not in self.marks:
            self.violations.append(Violation(self.path, node.lineno, what))

    def from_fixture(self, node: ast.expr | None) -> bool:
        if isinstance(node, ast.Attribute) and node.attr == "device":
            return True
        return isinstance(node, ast.Name) and node.id == "device" and any("device" in s for s in self.scopes)

    def _function(self, node) -> None:
        args = node.args
        names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        if not isinstance(node, ast.Lambda):  # a lambda standing in for a torch API keeps torch's signature
            positional = args.posonlyargs + args.args
            defaults = dict(zip([a.arg for a in positional][len(positional) - len(args.defaults):], args.defaults))
            defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
            if "device" in defaults:
                self.flag(node, f"{node.name}: a default for `device` (callers pass the fixture's)")
        for name in names & CPU_FIXTURES.keys():
            self.flag(node, f"{node.name} takes {name}, built on the CPU: take {CPU_FIXTURES[name]}")
        for dec in getattr(node, "decorator_list", ()):
            self.visit(dec)
        self.scopes.append(names)
        for stmt in (node.body if isinstance(node.body, list) else [node.body]):
            self.visit(stmt)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(isinstance(t, ast.Name) and t.id == "device" for t in node.targets):
            if self.scopes and self.from_fixture(node.value):
                self.scopes[-1] = self.scopes[-1] | {"device"}  # `device = x.device`: the fixture's, renamed
            else:
                self.flag(node, f"device = {ast.unparse(node.value)}: take the `device` fixture")
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        written = isinstance(node.value, ast.Call) and _dotted(node.value.func) == ["torch", "device"]  # reported as such
        if node.arg == "device" and not written and not self.from_fixture(node.value):
            self.flag(node.value, f"device={ast.unparse(node.value)}: take the `device` fixture")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        self._literals(node)
        self._construction(node)
        self.generic_visit(node)

    def _literals(self, node: ast.Call) -> None:
        path = _dotted(node.func)
        if path == ["torch", "device"]:
            self.flag(node, f"{ast.unparse(node)}: a device written down; take the `device` fixture")
        if isinstance(node.func, ast.Attribute) and node.func.attr == "cuda" and path != ["torch", "cuda"]:
            self.flag(node, f"{ast.unparse(node)}: .cuda(); use .to(device)")
        if isinstance(node.func, ast.Attribute) and node.func.attr == "to" and node.args:
            first = node.args[0]
            if isinstance(first, (ast.Constant, ast.JoinedStr)) and not isinstance(getattr(first, "value", ""), torch.dtype):
                if isinstance(first, ast.JoinedStr) or isinstance(first.value, str):
                    self.flag(node, f".to({ast.unparse(first)}): a device written down; use .to(device)")
        if path and path[-1] == "parametrize" and node.args:
            names = node.args[0]
            if isinstance(names, ast.Constant) and "device" in re.split(r"[,\s]+", str(names.value)):
                self.flag(node, "parametrize over `device`: the fixture gives it")

    def _construction(self, node: ast.Call) -> None:
        obj = _resolve(node.func, self.imports)
        local = self.local.get(node.func.id) if isinstance(node.func, ast.Name) else None
        name = ast.unparse(node.func)
        if obj is not None and any(obj is f for f in FACTORIES):
            self.constructions += 1
            kw = next((k.value for k in node.keywords if k.arg == "device"), None)
            if kw is None:
                self.flag(node, f"{name}(...) without device=: take the `device` fixture")
            return
        if obj is not None and any(obj is f for f in MOVED_ONLY):
            self.constructions += 1
            if not self._moved(node):
                self.flag(node, f"{name}(...) not followed by .to(device)")
            return
        if isinstance(local, (ast.FunctionDef, ast.AsyncFunctionDef)):
            position = _local_device_position(local)
        elif obj is not None and (inspect.isclass(obj) or (getattr(obj, "__module__", None) or "").startswith(BUILDER_MODULES)):
            position = _device_position(obj)  # a query such as torch.cuda.get_device_name(device) builds nothing
        else:
            return
        if position is not False:
            self.constructions += 1
            if not self._passes(node, position):
                self.flag(node, f"{name}(...) without its device: pass the `device` fixture")
        elif inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
            self.constructions += 1
            if not self._moved(node):
                self.flag(node, f"{name}(...) is an nn.Module built on the CPU: follow it with .to(device)")

    def _passes(self, node: ast.Call, position: int | None) -> bool:
        if any(k.arg == "device" for k in node.keywords):
            return True  # visit_keyword judges the value
        if position is None or position >= len(node.args) or any(isinstance(a, ast.Starred) for a in node.args[: position + 1]):
            return False
        return self.from_fixture(node.args[position])

    def _moved(self, node: ast.Call) -> bool:
        """Whether the expression that starts with this call moves it with .to(device) (a chain of method calls)."""
        while isinstance(attr := self.parents.get(node), ast.Attribute) and isinstance(call := self.parents.get(attr), ast.Call):
            if attr.attr == "cuda":
                return True  # moved, to a device written down: reported as such
            if attr.attr == "to" and (any(self.from_fixture(a) for a in call.args)
                                      or any(k.arg == "device" and self.from_fixture(k.value) for k in call.keywords)):
                return True
            node = call
        return False


def scoped_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (TESTS / folder).rglob("*.py") if "__pycache__" not in p.parts)


def check(path: str, source: str) -> tuple[list[Violation], int]:
    checker = Checker(path, source)
    return checker.run(), checker.constructions


def test_every_scoped_test_builds_on_the_device_fixture():
    found, seen = [], 0
    for path in scoped_files():
        violations, constructions = check(str(path.relative_to(TESTS.parent)), path.read_text())
        found += violations
        seen += constructions
    assert not found, "\n".join(map(str, found))
    assert seen > 200, seen  # the checker's reach: it sees the suite's constructions (272 when written)


def test_the_fixture_is_cuda_where_there_is_a_gpu_else_the_interpreting_cpu(device):
    import os

    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device == torch.device("cpu") and os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize("version, interpret, skips", [((3, 6), "1", True), ((3, 9), "1", False), ((3, 7), "1", False),
                                                      ((3, 6), None, False), (None, "1", False)])
def test_the_interpreter_skip_is_for_triton_3_6_interpreting_only(monkeypatch, version, interpret, skips):
    import conftest

    monkeypatch.setattr(conftest, "triton_version", lambda: version)
    if interpret is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
    if not skips:
        conftest.skip_where_the_interpreter_cannot_run_the_cores()
        return
    with pytest.raises(pytest.skip.Exception, match=r"Triton 3\.6's interpreter .*only 0-dimensional arrays"):
        conftest.skip_where_the_interpreter_cannot_run_the_cores()


# ---------- the checker on planted code --------------------------------------------------------------------------

CLEAN = '''
import torch
from conftest import random_dit
from histream_engine.attention.ring import RingView
from histream_engine.model.dit import RMSNorm

def inputs(n, device):
    g = torch.Generator(device=device).manual_seed(0)
    return torch.randn(n, 4, device=device, generator=g)

def test_clean(device):
    x = inputs(3, device)
    y = torch.zeros(3, 4, device=x.device)
    norm = RMSNorm(4, 1e-6).to(device).eval()
    dit = random_dit("tiny", device=device)
    lin = torch.nn.Linear(4, 4, device=device)
    ref = torch.arange(4, dtype=torch.float64)  # fixed-device: a host-side float64 table
    # fixed-device: the reference runs on the host
    table = torch.ones(2)
    back = torch.from_numpy(x.cpu().numpy()).to(device)
'''

# each planted violation: a line added to the clean test, and a fragment the checker must report
PLANTED = [
    ("    bad = torch.randn(3, 4)", "torch.randn(...) without device="),
    ("    bad = torch.empty(3, dtype=torch.int32)", "torch.empty(...) without device="),
    ("    bad = torch.randn(3, device='cpu')", "device='cpu'"),
    ("    bad = torch.randn(3, device=torch.device('cuda'))", "a device written down"),
    ("    bad = torch.Generator().manual_seed(1)", "torch.Generator(...) without device="),
    ("    bad = inputs(3, 'cpu')", "inputs(...) without its device"),
    ("    bad = inputs(3)", "inputs(...) without its device"),
    ("    bad = random_dit('tiny')", "random_dit(...) without its device"),
    ("    bad = RMSNorm(4, 1e-6)", "nn.Module built on the CPU"),
    ("    bad = RMSNorm(4, 1e-6).cuda()", ".cuda()"),
    ("    bad = torch.nn.Linear(4, 4)", "torch.nn.Linear(...) without its device"),
    ("    bad = x.to('cuda')", ".to('cuda')"),
    ("    bad = x.to(f'cuda:{0}')", ".to(f'cuda:{0}')"),
    ("    bad = RingView(slots=[0], frame_pos=[0], query_frames=1, grid=(1, 1), num_slots=1, freqs=None)",
     "RingView(...) without its device"),
    ("    bad = torch.from_numpy(x.cpu().numpy())", "not followed by .to(device)"),
    ("    bad = torch.ones(2)  # fixed-device:", "without a reason"),
    ("    def helper(device=None):\n        return device", "a default for `device`"),
    ("    def inner(tiny_dit):\n        return tiny_dit", "takes tiny_dit, built on the CPU"),
]


def planted(extra: str = "") -> str:
    return CLEAN + extra + "\n"


def test_the_checker_passes_the_clean_planted_test():
    violations, constructions = check("planted.py", planted())
    assert violations == [] and constructions == 10, (violations, constructions)


@pytest.mark.parametrize("line, fragment", PLANTED, ids=[f for _, f in PLANTED])
def test_the_checker_catches_each_planted_violation(line, fragment):
    violations, _ = check("planted.py", planted(line))
    assert len(violations) == 1 and fragment in violations[0].what, violations


def test_the_checker_catches_a_module_level_device_and_a_parametrized_one():
    source = textwrap.dedent('''
        import pytest, torch
        device = "cpu"
        X = torch.randn(3, device=device)

        @pytest.mark.parametrize("device", ["cpu"])
        def test_x(device):
            return torch.randn(3, device=device)
        ''')
    violations, _ = check("planted.py", source)
    assert [v.line for v in violations] == [3, 4, 6], violations
