"""Optional dependencies (the extras in setup.py): import one, or say exactly why it cannot be imported.

An ImportError means two different things. Either the package is not installed, and the fix is the extra that
installs it; or it is installed and its own import failed (a dependency of its own missing or too old, a folder on
``sys.path`` shadowing one of its modules, a broken build), and the fix is whatever that error says. Telling a user
to install a package they have hides the real error, so only a package that ``importlib`` cannot find at all is
reported as missing; any other failure is reported as itself.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class OptionalDependencyError(RuntimeError):
    """An optional package is missing (``installed`` False) or is installed and failed to import (``installed`` True).
    A RuntimeError, so the command line's one-line error handling covers it."""

    def __init__(self, message: str, package: str, installed: bool):
        super().__init__(message)
        self.package, self.installed = package, installed


def install_hint(extra: str | None, package: str) -> str:
    """How to get ``package``: its extra of histream_engine, or the package itself where no extra carries it."""
    return f"pip install 'histream_engine[{extra}]'" if extra else f"pip install {package}"


def is_installed(module: str) -> bool:
    """Whether ``module``'s top-level package can be found, without importing it (nothing of it runs)."""
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):  # a half-imported package in sys.modules has no __spec__
        return False


def missing_reason(module: str, extra: str | None, purpose: str) -> str | None:
    """Why ``purpose`` cannot use ``module`` because it is not installed, or None when it is installed. Cheap: it imports
    nothing, so an installed but broken package shows only when ``require`` imports it."""
    if is_installed(module):
        return None
    return f"{purpose} needs {module.partition('.')[0]}, which is not installed: {install_hint(extra, module.partition('.')[0])}"


def require(module: str, extra: str | None, purpose: str, *names: str):
    """``module`` imported (or, given ``names``, those attributes of it, one or a tuple), for ``purpose`` (what needs it,
    e.g. "the text encoder"). Raises OptionalDependencyError naming the extra that installs it when it is not
    installed, and naming the real error when it is installed but its import (or an attribute's, which lazily
    importing packages such as transformers import on access) fails."""
    package = module.partition(".")[0]
    try:
        mod = importlib.import_module(module)
        found = tuple(getattr(mod, name) for name in names)
    except (ImportError, AttributeError) as exc:
        if not is_installed(package) or (isinstance(exc, ModuleNotFoundError) and exc.name == module):
            raise OptionalDependencyError(
                f"{purpose} needs {module}, which is not installed: {install_hint(extra, package)}", package, False) from exc
        raise OptionalDependencyError(
            f"{purpose} needs {package}, which is installed but fails to import: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}", package, True) from exc
    if not names:
        return mod
    return found[0] if len(found) == 1 else found


def optional_module(module: str) -> ModuleType | None:
    """``module`` when it is installed and imports, else None: for facts that are only reported (a version in a record)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
