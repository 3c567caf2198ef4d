"""`scripts/test.sh` runs two test processes and relies on `xdist_group` to keep some tests
in one of them: the paper rehearsals (each writes GBs; two at once could fill CI's disk) and
tests sharing an expensive module fixture. With some pytest releases pytest-xdist's grouping
silently does nothing (pytest 9.2, pytest-xdist issue 1386); this catches such an install."""

from __future__ import annotations

import os
import subprocess
import sys

GROUPED = """
import os, pathlib, pytest
pytestmark = pytest.mark.xdist_group("together")
OUT = pathlib.Path(os.environ["WHERE_OUT"])
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    (OUT / f"grouped-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""
LOOSE = """
import time, pytest
@pytest.mark.parametrize("i", range(6))
def test_loose(i):
    time.sleep(0.2)
"""


def test_grouped_tests_run_in_one_test_process(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_loose.py").write_text(LOOSE)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "WHERE_OUT": str(out)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    workers = {p.read_text() for p in out.iterdir()}
    assert len(list(out.iterdir())) == 6 and len(workers) == 1, workers
