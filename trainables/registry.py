"""Name -> object registries (methods, spaces, studies) with one error style for unknown names."""

from __future__ import annotations

import difflib
import importlib
from typing import Generic, TypeVar

from trainables.errors import CxrkdError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries are added by decorators in ``modules``, imported on first lookup (not at import
    time of the registry itself)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = (), plural: str = "") -> None:
        self.kind, self.modules, self.plural = kind, modules, plural or f"{kind}s"
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise CxrkdError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        return item

    def all(self) -> dict[str, T]:
        for module in self.modules:
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
