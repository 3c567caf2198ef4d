"""Test-wide settings: offline, private CXRKD_HOME, few threads."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub/timm: a missing weight must fail at once, not
# retry for 30 s. Tests never touch the user's ~/.cxrkd.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import shutil

import pytest


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("cxrkd_home")
    monkeypatch.setenv("CXRKD_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)  # datasets and teacher caches: MBs per test
