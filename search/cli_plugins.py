"""``cxrkd plugins``: the installed plugins of every registry, loaded or not, and why not."""

from __future__ import annotations

import argparse
import json


def add_plugins_command(sub: argparse._SubParsersAction) -> None:
    from cxrkd.trainables.plugins import GROUPS  # the standard library only

    groups = "; ".join(f"{group}: {what}" for group, what in GROUPS.items())
    p = sub.add_parser(
        "plugins",
        help="list installed plugins (KD losses, methods, spaces, studies, tables, importers)",
        description="Installed packages add entries through entry points, one group per "
        f"registry ({groups}). Lists each with its distribution and version, and the error "
        "of each that was not loaded.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per plugin per line")
    p.set_defaults(func=cmd_plugins)


def all_plugins() -> list:
    """Every registry's plugins, loading them (what a lookup would)."""
    from cxrkd.results.study_tables import STUDY_TABLES
    from cxrkd.spaces import SPACES
    from cxrkd.spaces.studies import STUDIES
    from cxrkd.trainables.data.importers import IMPORTERS
    from cxrkd.trainables.kd import KD_LOSSES
    from cxrkd.trainables.methods import METHODS

    registries = (KD_LOSSES, METHODS, SPACES, STUDIES, STUDY_TABLES, IMPORTERS)
    return [plugin for registry in registries for plugin in registry.plugins()]


def cmd_plugins(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cxrkd.trainables.plugins import GROUPS

    plugins = all_plugins()
    if args.json:
        for plugin in plugins:
            print(json.dumps(asdict(plugin)))
        return 0
    if not plugins:
        print(f"no plugins installed (entry-point groups: {', '.join(GROUPS)})")
        return 0
    for plugin in plugins:
        what = f"provides {', '.join(plugin.provides) or 'nothing'}"
        print(f"{plugin.title}: {'NOT LOADED: ' + plugin.error if plugin.error else what}")
    broken = sum(bool(p.error) for p in plugins)
    print(f"{len(plugins) - broken} loaded, {broken} not loaded")
    return 0
