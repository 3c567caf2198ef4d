"""Test-wide settings: offline, private CXRKD_HOME, few threads."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub/timm: a missing weight must fail at once, not
# retry for 30 s. Tests never touch the user's ~/.cxrkd.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# One torch (OpenMP) thread in this process and every process it starts (CLI drivers, Ray's
# trial workers), set before torch is imported. The tests' tensors are tiny, so a second
# thread gains little, and on 2 cores shared with Ray's processes (or anything else) its
# spin-waiting costs 10-30x: a ResNet-18 step at 16 px took 1-3 s with 2 threads on a busy
# 2-core box against 0.09 s with 1; tests/trainables took 210 s against 61 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tests' own Ray instances report no usage to Ray's makers (no traffic off this machine).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import shutil

import pytest


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("cxrkd_home")
    monkeypatch.setenv("CXRKD_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)  # datasets and teacher caches: MBs per test


def pytest_collection_modifyitems(config, items):
    """The slow tests first, in their own order, then the rest: with two test processes
    (`scripts/test.sh`: pytest-xdist hands tests out in this order), the many short tests fill
    the end of the run, so neither process waits alone on a long test at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
