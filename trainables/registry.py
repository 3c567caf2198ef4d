"""Name -> object registries (methods, spaces, studies, KD losses, study tables) with one error
style for unknown names, and each registry's plugins (:mod:`trainables.plugins`)."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from typing import Generic, TypeVar

from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.plugins import Plugin, load_group

T = TypeVar("T")

# The entry-point group of each registry, by its kind (the registries are made in their
# packages; trainables.plugins documents the groups). tests/test_plugins.py checks each.
GROUP_OF_KIND = {
    "KD loss": "cxrkd.kd_losses",
    "method": "cxrkd.methods",
    "space": "cxrkd.spaces",
    "study": "cxrkd.studies",
    "tables of study": "cxrkd.study_tables",
}


def _registering_module() -> str:
    """The module that registers an entry: the first module on the stack that is not cxrkd's
    registering code (a plugin's, a test's), or the cxrkd module whose top level registers
    (decorators and ``register_*`` calls run at import)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "?")
        if frame.f_code.co_name == "<module>" or not name.startswith("cxrkd."):
            return name
        frame = frame.f_back
    return "?"


class Registry(Generic[T]):
    """Entries are added by decorators in ``modules``, imported on first lookup (not at import
    time of the registry itself). With ``package``, every public module of that package (a
    name not starting with ``_``) is imported too, found with :func:`pkgutil.iter_modules`:
    adding an entry is adding a file there. Then, once per process, the modules of the entry
    points of ``group`` (default: :data:`GROUP_OF_KIND`), installed plugins."""

    def __init__(
        self,
        kind: str,
        modules: tuple[str, ...] = (),
        plural: str = "",
        *,
        package: str = "",
        group: str | None = None,
    ) -> None:
        self.kind, self.modules, self.plural = kind, modules, plural or f"{kind}s"
        self.package = package
        self.group = GROUP_OF_KIND.get(kind, "") if group is None else group
        self._found: tuple[str, ...] | None = None
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}  # name -> the module that registered it
        self._plugins: list[Plugin] | None = None
        self._loading = ""  # the plugin being loaded, for the message of a taken name

    def add(self, name: str, item: T) -> T:
        module = _registering_module()
        if name in self._items:
            first = self._origin.get(name, "?")
            if self._loading:
                raise CxrkdError(
                    f"{self.kind} {name!r} is already registered by {first}: plugin "
                    f"{self._loading} ({module}) cannot replace it; rename the plugin's entry"
                )
            raise CxrkdError(f"{self.kind} {name!r} registered twice ({first}, then {module})")
        self._items[name] = item
        self._origin[name] = module
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
        if self._plugins is None:
            self._plugins = []  # a lookup made while plugins load sees what is there
            self._plugins = load_group(self.group, self._load_plugin) if self.group else []
        return self._items

    def plugins(self) -> list[Plugin]:
        """This registry's plugins (loaded now if not yet), each with its names or error."""
        self.all()
        return list(self._plugins or [])

    def origin(self, name: str) -> str:
        """The module that registered ``name`` (a plugin's module for a plugin's entry)."""
        self.all()
        return self._origin[name]

    def _load_plugin(self, ep) -> tuple[str, ...]:
        """Import the entry point's module; what it registered, or nothing when it fails."""
        before = len(self._items)
        self._loading = f"{ep.name} = {ep.value}"
        try:
            ep.load()
        except BaseException:
            for name in list(self._items)[before:]:
                del self._items[name], self._origin[name]
            raise
        finally:
            self._loading = ""
        module = ep.module
        return tuple(
            name
            for name, origin in self._origin.items()
            if origin == module or origin.startswith(f"{module}.")
        )

    def get(self, name: str) -> T:
        items = self.all()
        if name not in items:
            close = difflib.get_close_matches(name, items, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CxrkdError(
                f"unknown {self.kind} {name!r}{hint}; known {self.plural}: {sorted(items)}"
            )
        return items[name]
