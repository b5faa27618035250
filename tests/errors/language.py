"""Python words in user-facing messages (issue 30, item 5): each entry point speaks its own names, flags on the CLI
and JSON fields over HTTP. Checked the way tests/test_docs.py checks flags: the error matrices' messages are
scanned for ``None``, ``dict`` and the package's Python parameter names, every argument and dataclass field name
of its source that is spelt in snake_case (a single word such as ``height`` is also English, and a flag's name).
A name the entry point itself uses (a JSON field over HTTP) is allowed there."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "histream_engine"
PYTHON_TYPES = re.compile(r"\b(None|dict|True|False|kwargs)\b")
SNAKE = re.compile(r"(?<![\w./'\"-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w/.-])")
KEYWORD = re.compile(r"(?<![\w./-])([a-z][a-z0-9_]+)=")  # two letters or more: t=625 is a timestep


@cache
def python_names() -> frozenset[str]:
    """Every function argument and annotated class field in the package's source."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args
                names.update(a.arg for a in args.posonlyargs + args.args + args.kwonlyargs)
            elif isinstance(node, ast.ClassDef):
                names.update(s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name))
    return frozenset(names - {"self", "cls"})


def python_words(message: str, allowed: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The Python words in ``message`` that its entry point does not use: ``None``, ``dict``, a snake_case parameter
    name, or any parameter name written as a keyword argument (``frames=``)."""
    found = PYTHON_TYPES.findall(message)
    names = python_names()
    found += [m for m in SNAKE.findall(message) if m in names and m not in allowed]
    found += [f"{m}=" for m in KEYWORD.findall(message) if m in names and m not in allowed]
    return found


def error_lines(stderr: str) -> str:
    """What a command said of the error: its "error:" lines, not argparse's usage (which names metavariables)."""
    return "\n".join(line for line in stderr.splitlines() if "error:" in line)
