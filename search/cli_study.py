"""``cxrkd study list`` and ``cxrkd study show NAME [--profile P] [--format toml|yaml]``: the
built-in studies, and one printed as a study file (TOML by default, or YAML) that ``cxrkd
search run FILE.toml`` (``FILE.yaml``) runs as it is."""

from __future__ import annotations

import argparse


def add_study_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="list the built-in studies or print one as a study file")
    ssub = p.add_subparsers(dest="study_command", required=True, metavar="SUBCOMMAND")
    ls = ssub.add_parser("list", help="the built-in studies and their profiles")
    ls.set_defaults(func=cmd_list)
    show = ssub.add_parser(
        "show",
        help="print a built-in study as a study file (TOML or YAML)",
        description="Prints every profile's study fully expanded (cells, timm models, search "
        "ranges, tables), or one with --profile. Save it, edit it, and run it with "
        "`cxrkd search run FILE.toml --profile P` (with --format yaml: FILE.yaml).",
    )
    show.add_argument("name", help="a built-in study (cxrkd study list)")
    show.add_argument("--profile", help="only this profile (default: all)")
    show.add_argument(
        "--format", choices=("toml", "yaml"), default="toml",
        help="the file's format (default: toml); save YAML as .yaml or .yml",
    )  # fmt: skip
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
    print(builtin_study_text(args.name, args.profile, fmt=args.format), end="")
    return 0
