"""``cxrkd study list`` and ``cxrkd study show NAME [--profile P]``: the built-in studies, and
one printed as a study file (TOML) that ``cxrkd search run FILE.toml`` runs as it is."""

from __future__ import annotations

import argparse


def add_study_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="list the built-in studies or print one as a study file")
    ssub = p.add_subparsers(dest="study_command", required=True, metavar="SUBCOMMAND")
    ls = ssub.add_parser("list", help="the built-in studies and their profiles")
    ls.set_defaults(func=cmd_list)
    show = ssub.add_parser(
        "show",
        help="print a built-in study as a study file (TOML)",
        description="Prints every profile's study fully expanded (cells, timm models, search "
        "ranges, tables), or one with --profile. Save it, edit it, and run it with "
        "`cxrkd search run FILE.toml --profile P`.",
    )
    show.add_argument("name", help="a built-in study (cxrkd study list)")
    show.add_argument("--profile", help="only this profile (default: all)")
    show.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:
    from cxrkd.spaces.studies import STUDIES

    for name, (_, profiles) in STUDIES.all().items():
        print(f"{name}: profiles {', '.join(profiles)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cxrkd.search.study_source import builtin_study_text
    from cxrkd.spaces.studies import STUDIES
    from cxrkd.trainables.errors import CxrkdError

    _, profiles = STUDIES.get(args.name)
    if args.profile is not None and args.profile not in profiles:
        raise CxrkdError(
            f"unknown profile {args.profile!r} for study {args.name!r}; known: {list(profiles)}"
        )
    print(builtin_study_text(args.name, args.profile), end="")
    return 0
