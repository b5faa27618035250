"""No function in the package (python/histream_engine, and kernels/ and bench/, installed in it) is over 100 lines:
one that grows past it has taken on several jobs (``create_app`` and ``VideoStream._chunks`` did). Read with ``ast``;
the checker runs on a planted long function too, so the limit can fail."""

import ast
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = (REPO / "python" / "histream_engine", REPO / "kernels", REPO / "bench")
LIMIT = 100


def long_functions(path: Path, limit: int = LIMIT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.relative_to(path.parents[1]) if path.parents[1] else path}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > limit]


def test_no_function_in_the_package_is_over_100_lines():
    files = [p for folder in FOLDERS for p in folder.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 100  # the scan reaches the package
    found = [f for p in files for f in long_functions(p)]
    assert not found, found


def test_the_checker_finds_a_planted_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    path = tmp_path / "pkg" / "long.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent("def short():\n    return 1\n\n\ndef long():\n") + body + "\n")
    assert [f.split()[1] for f in long_functions(path)] == ["long"]
