"""Local writes of the run folder are durable: data on disk before the rename, rename on disk
before the call returns (a crash leaves the old file or the new one, never an empty one)."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from cxrkd.trainables import storage


@pytest.fixture
def events(monkeypatch):
    """What reached the disk, in order: ``("fsync", path)`` and ``("replace", dst)``."""
    log: list[tuple[str, str]] = []
    fd_paths: dict[int, str] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def spy_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        fd_paths[fd] = os.path.abspath(path)
        return fd

    def spy_fsync(fd):
        log.append(("fsync", fd_paths.get(fd, f"fd {fd}")))
        real_fsync(fd)

    def spy_replace(src, dst):
        log.append(("replace", os.path.abspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return log


def _check_durable(log: list[tuple[str, str]], path) -> None:
    path, folder = str(path), str(path.parent)
    replace = log.index(("replace", path))
    synced_before = [p for kind, p in log[:replace] if kind == "fsync"]
    assert synced_before and synced_before[-1] != folder, f"file not synced before rename: {log}"
    assert ("fsync", folder) in log[replace + 1 :], f"folder not synced after rename: {log}"


def test_write_text_syncs_the_file_then_the_folder(tmp_path, events):
    target = tmp_path / "run" / "state.json"
    storage.write_json(str(target), {"done": ["teacher"]})
    assert storage.read_json(str(target)) == {"done": ["teacher"]}
    _check_durable(events, target)


def test_write_parquet_syncs_the_file_then_the_folder(tmp_path, events):
    target = tmp_path / "trials.parquet"
    storage.write_parquet(str(target), pd.DataFrame({"a": [1, 2]}))
    assert storage.read_parquet(str(target))["a"].tolist() == [1, 2]
    _check_durable(events, target)
