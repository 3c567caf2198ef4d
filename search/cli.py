"""The ``cxrkd`` command line. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading

from cxrkd.trainables.errors import CxrkdError


def cxrkd_version() -> str:
    """The installed distribution's version (``pyproject.toml``)."""
    from importlib import metadata

    try:
        return metadata.version("cxrkd")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    from cxrkd.search.cli_data import add_data_commands
    from cxrkd.search.cli_export import add_export_commands
    from cxrkd.search.cli_plugins import add_plugins_command
    from cxrkd.search.cli_report import add_report_commands
    from cxrkd.search.cli_search import add_search_commands
    from cxrkd.search.cli_study import add_study_commands

    parser = argparse.ArgumentParser(
        prog="cxrkd",
        description="Hyperparameter search for chest X-ray transfer learning and knowledge "
        "distillation (Ray Tune + Optuna). Datasets live in $CXRKD_HOME (default ~/.cxrkd).",
    )
    parser.add_argument("--version", action="version", version=f"cxrkd {cxrkd_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(sub)
    add_search_commands(sub)
    add_report_commands(sub)
    add_export_commands(sub)
    add_plugins_command(sub)
    add_study_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CxrkdError as exc:
        print(f"cxrkd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cxrkd: interrupted", file=sys.stderr)
        return 130


def exit_now(code: int):
    """End the process with ``code`` as a normal exit would, without tearing the interpreter
    down: other threads are joined, atexit handlers run (Ray's shutdown, logging, temporary
    folders' finalizers), the standard streams are flushed; then ``os._exit``. Freeing every
    module and object of torch, timm, Ray and plotly one by one takes 2-4 s of a CPU core at
    the end of each command, and nothing of ours needs it."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


def run() -> None:
    """The ``cxrkd`` command (``python -m cxrkd.search.cli``): :func:`main`, then
    :func:`exit_now`. Tests call :func:`main`, which returns the exit code."""
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, --version, a usage error
        if not isinstance(exc.code, int | None):
            raise
        code = exc.code or 0
    exit_now(code)


if __name__ == "__main__":
    run()
