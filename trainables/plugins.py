"""Plugins: installed packages that add KD losses, methods, spaces, studies, study tables and
dataset importers through entry points (``importlib.metadata``).

One group per registry, each entry point's value naming what the in-tree code would be:

=====================  ============================================  ========================
group                  value                                         in-tree equivalent
=====================  ============================================  ========================
``cxrkd.kd_losses``    a module calling ``register_kd`` on import     ``trainables/kd/*.py``
``cxrkd.methods``      a module with ``@register_method``             ``trainables/methods/``
``cxrkd.spaces``       a module with ``@register_space``              ``spaces/*.py``
``cxrkd.studies``      a module with ``@register_study``              ``spaces/*.py``
``cxrkd.study_tables`` a module with ``@register_tables``             ``results/*_tables.py``
``cxrkd.importers``    ``"module:planner"``; the entry point's name   ``IMPORTERS``
                       is the dataset kind, the planner docstring's
                       first line its help
=====================  ============================================  ========================

Why one group per registry rather than one ``cxrkd.plugins`` group: a registry loads its own
group after its built-in entries (on its first lookup, once per process), so a plugin can never
take a built-in name (it is refused, naming both), and a plugin of one layer imports only what
that layer may (a Ray worker looking up a KD loss does not import a plugin's tables, i.e. the
results layer). A plugin that fails (an ImportError, any exception at import, a name taken) is
named in one warning with its distribution, entry point and error, contributes nothing (what it
had registered is removed) and everything else still loads; ``cxrkd plugins`` lists both.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

GROUPS = {
    "cxrkd.kd_losses": "KD losses (trainables.kd.register_kd)",
    "cxrkd.methods": "training methods (trainables.methods.register_method)",
    "cxrkd.spaces": "search spaces (spaces.register_space)",
    "cxrkd.studies": "studies (spaces.studies.register_study)",
    "cxrkd.study_tables": "study tables (results.study_tables.register_tables)",
    "cxrkd.importers": "dataset importers (name = kind, value = module:planner)",
}


class PluginWarning(UserWarning):
    """A plugin was not loaded (it is named with its error; the rest is loaded)."""


@dataclass(frozen=True)
class Plugin:
    """One entry point as loaded: what it provides, or why it was not loaded."""

    group: str
    name: str
    value: str
    dist: str  # the distribution that declares it ("?" when metadata has none)
    version: str
    provides: tuple[str, ...] = ()
    error: str = ""

    @property
    def title(self) -> str:
        return f"{self.group}: {self.name} = {self.value} (from {self.dist} {self.version})"


def _dist(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"] or "?", dist.version or "?"


def entry_points_of(group: str) -> list[metadata.EntryPoint]:
    """The group's entry points, by distribution then name (a stable load order)."""
    eps = metadata.entry_points(group=group)
    return sorted(eps, key=lambda ep: (_dist(ep)[0], ep.name, ep.value))


def _reason(exc: BaseException) -> str:
    """The error in one line, with the plugin's file and line where the traceback has one."""
    line = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "importlib" not in f.filename]
    if own and not type(exc).__module__.startswith("cxrkd"):
        line += f" (at {own[-1].filename}:{own[-1].lineno})"
    return line


def load_group(group: str, load: Callable[[metadata.EntryPoint], tuple[str, ...]]) -> list[Plugin]:
    """Load every entry point of ``group`` with ``load(ep) -> names it provides``; one that
    raises is warned about (:class:`PluginWarning`, once) and recorded with its error."""
    loaded = []
    for ep in entry_points_of(group):
        dist, version = _dist(ep)
        try:
            provides = tuple(load(ep))
        except Exception as exc:  # a plugin's bug must not stop the command
            plugin = Plugin(group, ep.name, ep.value, dist, version, error=_reason(exc))
            # Located at the distribution, not at this file: the line to fix is the plugin's.
            warnings.warn_explicit(
                f"cxrkd: plugin {plugin.title} not loaded: {plugin.error}; the rest is loaded "
                f"(fix or uninstall {dist})",
                PluginWarning,
                filename=f"<plugin {dist}>",
                lineno=0,
            )
        else:
            plugin = Plugin(group, ep.name, ep.value, dist, version, provides)
        loaded.append(plugin)
    return loaded
