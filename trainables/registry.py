"""Name -> object registries (methods, spaces, studies, KD losses) with one error style for
unknown names."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Generic, TypeVar

from cxrkd.trainables.errors import CxrkdError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries are added by decorators in ``modules``, imported on first lookup (not at import
    time of the registry itself). With ``package``, every public module of that package (a
    name not starting with ``_``) is imported too, found with :func:`pkgutil.iter_modules`:
    adding an entry is adding a file there."""

    def __init__(
        self, kind: str, modules: tuple[str, ...] = (), plural: str = "", *, package: str = ""
    ) -> None:
        self.kind, self.modules, self.plural = kind, modules, plural or f"{kind}s"
        self.package = package
        self._found: tuple[str, ...] | None = None
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise CxrkdError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        return item

    def discovered(self) -> tuple[str, ...]:
        """The modules of ``package`` (listed once per process; sorted by name)."""
        if self._found is None:
            found = ()
            if self.package:
                path = importlib.import_module(self.package).__path__
                found = tuple(
                    sorted(
                        f"{self.package}.{m.name}"
                        for m in pkgutil.iter_modules(path)
                        if not m.name.startswith("_")
                    )
                )
            self._found = found
        return self._found

    def all(self) -> dict[str, T]:
        for module in (*self.modules, *self.discovered()):
            importlib.import_module(module)
        return self._items

    def get(self, name: str) -> T:
        items = self.all()
        if name not in items:
            close = difflib.get_close_matches(name, items, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CxrkdError(
                f"unknown {self.kind} {name!r}{hint}; known {self.plural}: {sorted(items)}"
            )
        return items[name]
