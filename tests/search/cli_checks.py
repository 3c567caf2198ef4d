"""What every bad-input test of the command line checks (imported by the test modules)."""

from __future__ import annotations

import re

import ray

from cxrkd.search.cli import main


def fails(capsys, argv: list[str], *patterns: str) -> str:
    """Run the CLI; it must exit 2 with every pattern (a regex) in its error message, and
    without having started Ray."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrkd: error: "), err
    for pattern in patterns:
        assert re.search(pattern, err), f"{pattern!r} not in {err!r}"
    assert not ray.is_initialized(), "Ray was started before the input was checked"
    return err
