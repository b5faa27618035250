"""Imports point one way (README, "Import direction"), read from the source with ``ast``, so a wrong arrow fails here
even where it happens to import cleanly today (a lazy import inside a function runs only when called):

- ``runtime/`` never imports ``graphs/`` (it reaches it by module name, through the DiT-runner registry) nor the
  package root (``from .. import``, ``import histream_engine``), at module level or lazily;
- ``model/`` and ``attention/`` never import ``runtime/``, ``serve/`` or ``cli``;
- ``kernels/`` imports nothing of the package but itself and ``native/``;
- no module-level import cycle among the package's modules (imports under ``if TYPE_CHECKING:`` never run).

The checker runs on a synthetic tree too, so a rule that could never fail is caught."""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = "histream_engine"
# where each package's files are: setup.py maps kernels/ and bench/ in from the top level
SOURCES = {ROOT: REPO / "python" / ROOT, f"{ROOT}.kernels": REPO / "kernels", f"{ROOT}.bench": REPO / "bench"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module it loads: a submodule when the name is one, else the package or module named
    from_root: bool  # the statement names the package root itself (``from .. import x``, ``import histream_engine``)
    lazy: bool  # inside a function: runs when called, not at import
    type_checking: bool  # under ``if TYPE_CHECKING:``: never runs
    line: int

    def __str__(self) -> str:
        how = "lazily " if self.lazy else ""
        return f"{self.source} (line {self.line}) {how}imports {self.target}"


def discover(sources: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under each source folder (``__init__.py`` names its package)."""
    modules = {}
    for package, folder in sorted(sources.items(), key=lambda kv: kv[0].count(".")):  # mapped-in packages win
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if "__pycache__" in parts or any(p.startswith(".") for p in parts):
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, lazy: bool = False, type_checking: bool = False):
    """(import node, lazy, type_checking) for every import statement, with the context it runs in."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, lazy, type_checking
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, True, type_checking)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), lazy, True)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), lazy, type_checking)
        else:
            yield from _walk(child, lazy, type_checking)


def imports_of(name: str, path: Path, modules: dict[str, Path], root: str = ROOT) -> list[Import]:
    """The package-internal imports of one module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, lazy, tc in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == root or alias.name.startswith(root + "."):
                    found.append(Import(name, _nearest(alias.name, modules), True, lazy, tc, node.lineno))
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            frm = ".".join(base + ([node.module] if node.module else []))
        else:
            frm = node.module or ""
        if frm != root and not frm.startswith(root + "."):
            continue
        for alias in node.names:  # ``from pkg import sub`` loads the submodule when there is one
            target = f"{frm}.{alias.name}" if f"{frm}.{alias.name}" in modules else _nearest(frm, modules)
            found.append(Import(name, target, frm == root, lazy, tc, node.lineno))
    return found


def _nearest(dotted: str, modules: dict[str, Path]) -> str:
    while dotted not in modules and "." in dotted:
        dotted = dotted.rpartition(".")[0]
    return dotted


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def direction_violations(imports: list[Import], root: str = ROOT) -> list[str]:
    """Every import that points the wrong way, lazy ones included; type-checking-only ones never run, so they pass."""
    upper = (f"{root}.runtime", f"{root}.serve", f"{root}.cli")
    bad = []
    for imp in (i for i in imports if not i.type_checking):
        src, dst = imp.source, imp.target
        if _under(src, f"{root}.runtime") and _under(dst, f"{root}.graphs"):
            bad.append(f"{imp}: runtime/ reaches graphs/ only by module name, through runtime/runners/registry.py")
        if imp.from_root and src.count(".") >= 2 and not _under(src, f"{root}.bench"):
            bad.append(f"{imp} from the package root: pass the value in, or import the module that defines it")
        if _under(src, f"{root}.model") or _under(src, f"{root}.attention"):
            for up in upper:
                if _under(dst, up):
                    bad.append(f"{imp}: model/ and attention/ sit below {up.rpartition('.')[2]}")
        if _under(src, f"{root}.kernels") and not (_under(dst, f"{root}.kernels") or _under(dst, f"{root}.native")):
            bad.append(f"{imp}: kernels/ is the bottom layer; it imports only itself and native/")
    return bad


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of modules (more than one, or one importing itself) over every import: module-level,
    lazy and type-checking-only alike."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is a few hundred edges, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def scan(sources: dict[str, Path], root: str = ROOT) -> tuple[dict[str, Path], list[Import]]:
    modules = discover(sources)
    return modules, [imp for name, path in sorted(modules.items()) for imp in imports_of(name, path, modules, root)]


@pytest.fixture(scope="module")
def package():
    return scan(SOURCES)


def test_the_scan_sees_the_package(package):
    """Guards the checker's reach: the layers it judges are found, and their known imports with them."""
    modules, imports = package
    for layer in ("runtime.engine", "graphs.runners", "model.dit", "attention.cores", "kernels.attention_core", "serve.app", "cli"):
        assert f"{ROOT}.{layer}" in modules, layer
    edges = {(i.source, i.target) for i in imports}
    assert (f"{ROOT}.cli", f"{ROOT}.runtime") in edges and len(imports) > 200


def test_imports_point_one_way(package):
    _, imports = package
    assert direction_violations(imports) == []


def test_no_import_cycle(package):
    _, imports = package
    cycles = import_cycles(imports)
    detail = ["; ".join(str(i) for i in imports if i.source in c and i.target in c) for c in cycles]
    assert cycles == [], detail


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


CLEAN = {
    "pkg/__init__.py": "from .runtime import engine\n",
    "pkg/config.py": "X = 1\n",
    "pkg/runtime/__init__.py": "from .engine import Engine\n",
    "pkg/runtime/engine.py": """
        import importlib
        from typing import TYPE_CHECKING
        from ..config import X
        from ..model import dit
        if TYPE_CHECKING:
            from ..graphs.runners import Runner  # never runs
        class Engine:
            def runner(self):
                return importlib.import_module("pkg.graphs.runners")  # by name: allowed
        """,
    "pkg/graphs/__init__.py": "",
    "pkg/graphs/runners.py": "from ..config import X\n",
    "pkg/model/__init__.py": "",
    "pkg/model/dit.py": "from ..attention import cores\n",
    "pkg/attention/__init__.py": "",
    "pkg/attention/cores.py": "from pkg.kernels import core\n",
    "pkg/native/__init__.py": "",
    "kern/__init__.py": "",
    "kern/core.py": "from .checks import check\nfrom pkg.native import ops\n",
    "kern/checks.py": "def check():\n    pass\n",
}

# each synthetic violation: (file changed, its new text, a fragment the checker must report)
VIOLATIONS = [
    ("pkg/runtime/engine.py", "def f():\n    from ..graphs import runners\n", "runtime/ reaches graphs/"),
    ("pkg/runtime/engine.py", "def f():\n    from .. import __version__\n", "from the package root"),
    ("pkg/runtime/engine.py", "import pkg\n", "from the package root"),
    ("pkg/runtime/engine.py", "from pkg import config\n", "from the package root"),
    ("pkg/model/dit.py", "def f():\n    from ..runtime import engine\n", "sit below runtime"),
    ("pkg/attention/cores.py", "from ..serve.app import app\n", "sit below serve"),
    ("pkg/attention/cores.py", "from ..cli import main\n", "sit below cli"),
    ("pkg/graphs/runners.py", "from .. import config\n", "from the package root"),
    ("kern/core.py", "from pkg.runtime import engine\n", "kernels/ is the bottom layer"),
]


def synthetic(tmp_path, change: dict[str, str] | None = None):
    files = {**CLEAN, **(change or {}), "pkg/serve/app.py": "app = None\n", "pkg/cli.py": ""}
    tree = write_tree(tmp_path, files)
    return scan({"pkg": tree / "pkg", "pkg.kernels": tree / "kern"}, root="pkg")


def test_the_checker_passes_a_clean_synthetic_tree(tmp_path):
    modules, imports = synthetic(tmp_path)
    assert "pkg.kernels.core" in modules and direction_violations(imports, "pkg") == [] and import_cycles(imports) == []
    tc = [i for i in imports if i.type_checking]
    assert [(i.source, i.target) for i in tc] == [("pkg.runtime.engine", "pkg.graphs.runners")]


@pytest.mark.parametrize("path, text, fragment", VIOLATIONS, ids=[f"{p}:{f}" for p, _, f in VIOLATIONS])
def test_the_checker_catches_each_synthetic_violation(tmp_path, path, text, fragment):
    _, imports = synthetic(tmp_path, {path: text})
    found = direction_violations(imports, "pkg")
    assert len(found) == 1 and fragment in found[0], found


def test_the_checker_catches_a_cycle_lazy_or_type_checking_ones_too(tmp_path):
    _, imports = synthetic(tmp_path, {"pkg/config.py": "from .model.dit import cores\n",
                                      "pkg/model/dit.py": "from ..attention import cores\nfrom ..config import X\n"})
    assert import_cycles(imports) == [["pkg.config", "pkg.model.dit"]]
    for guarded in ("def f():\n    from .model import dit\n", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .model import dit\n"):
        _, imports = synthetic(tmp_path, {"pkg/config.py": guarded, "pkg/model/dit.py": "from ..config import X\n"})
        assert import_cycles(imports) == [["pkg.config", "pkg.model.dit"]], guarded
