"""One registry type for every kind of plug-in (attention backends, DiT runners): an explicit list of entries, each
able to say why it cannot run here, built by name only when asked for, so an entry whose dependency is missing is
never imported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from .optional import is_installed

T = TypeVar("T")


def missing_package(package: str, install: str) -> str | None:
    """Why a plug-in needing ``package`` cannot run (``install`` says how to get it), or None when it is importable."""
    return None if is_installed(package) else f"the {package} package is not installed ({install})"


@dataclass(frozen=True)
class Plugin(Generic[T]):
    name: str
    unavailable_reason: Callable[[], str | None]  # None when usable here, else why not (a missing package, no GPU)
    build: Callable[..., T]  # imports the plug-in's module and builds it: called only once it is asked for
    traits: Any = None  # what the registry's users need to know of an entry before building it (kind-specific)


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: tuple[Plugin[T], ...], field: str | None = None):
        """``kind`` names the plug-ins in messages; ``field``, the setting that picks one (``dit='tensorrt'``), if any."""
        self.kind, self.entries, self.field = kind, entries, field
        self._by_name = {e.name: e for e in entries}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def entry(self, name: str) -> Plugin[T]:
        if name not in self._by_name:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {list(self._by_name)}")
        return self._by_name[name]

    def listing(self) -> list[tuple[str, bool, str]]:
        """Every entry as (name, available, reason); reason is "" when available."""
        return [(e.name, (why := e.unavailable_reason()) is None, why or "") for e in self.entries]

    def build(self, name: str, *args, **kwargs) -> T:
        """The plug-in ``name``, refusing with the reason when it cannot run here."""
        entry = self.entry(name)
        if (why := entry.unavailable_reason()) is not None:
            what = f"{self.field}={name!r}" if self.field else f"{self.kind} {name!r}"
            raise RuntimeError(f"{what} is unavailable: {why}")
        return entry.build(*args, **kwargs)
