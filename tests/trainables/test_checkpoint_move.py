"""An epoch's checkpoint is renamed into a run folder on the same local disk (not copied: a
ViT-Base checkpoint is ~1 GB per epoch), and copied by Tune anywhere else. Through Ray's own
``StorageContext``, as a trial's ``tune.report`` persists it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from ray.train import Checkpoint
from ray.train._internal.storage import StorageContext

from cxrkd.trainables import checkpoint_move

FILES = {"model.pt": b"weights" * 1000, "state.pt": b"optimiser" * 1000, "sub/x.npz": b"x"}


def _patched_context(monkeypatch, path: str, **kw) -> StorageContext:
    """A trial's storage context at ``path``, with the move installed (twice: idempotent);
    Tune's own method is back after the test."""
    monkeypatch.setattr(StorageContext, "persist_current_checkpoint",
                        StorageContext.persist_current_checkpoint)  # fmt: skip
    ctx = StorageContext(path, "study", trial_dir_name="trial_1", **kw)
    ctx.current_checkpoint_index = 0
    checkpoint_move.move_local_checkpoints()
    checkpoint_move.move_local_checkpoints()
    return ctx


@pytest.fixture
def storage(tmp_path, monkeypatch) -> StorageContext:
    """A run folder under ``tmp_path``, on the same disk as the tests' scratch folders."""
    return _patched_context(monkeypatch, str(tmp_path / "runs"))


def _epoch_folder(root: Path) -> Checkpoint:
    folder = root / "cxrkd-ckpt-1-x" / "epoch-0001"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return Checkpoint.from_directory(str(folder))


def _holds_the_files(path: str) -> bool:
    return {n: (Path(path) / n).read_bytes() for n in FILES} == FILES


def test_a_checkpoint_on_the_same_disk_is_moved_into_the_run_folder(storage, tmp_path):
    ckpt = _epoch_folder(tmp_path / "scratch")
    persisted = storage.persist_current_checkpoint(ckpt)
    assert persisted.path == storage.checkpoint_fs_path and _holds_the_files(persisted.path)
    assert not Path(ckpt.path).exists()  # moved: nothing left to copy or delete
    assert isinstance(persisted.filesystem, pafs.LocalFileSystem)


def test_another_disk_or_a_folder_already_there_is_copied(storage, tmp_path, monkeypatch):
    ckpt = _epoch_folder(tmp_path / "scratch")

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    with monkeypatch.context() as m:
        m.setattr(checkpoint_move.os, "rename", cross_device)
        persisted = storage.persist_current_checkpoint(ckpt)
    assert _holds_the_files(persisted.path) and _holds_the_files(ckpt.path)  # a copy
    storage.current_checkpoint_index = 1
    Path(storage.checkpoint_fs_path).mkdir(parents=True)
    (Path(storage.checkpoint_fs_path) / "kept.txt").write_text("there before")
    persisted = storage.persist_current_checkpoint(ckpt)  # never renamed over a full folder
    assert _holds_the_files(persisted.path) and _holds_the_files(ckpt.path)
    assert (Path(persisted.path) / "kept.txt").read_text() == "there before"


def test_a_run_folder_on_another_filesystem_is_copied_by_tune(tmp_path, monkeypatch):
    (tmp_path / "bucket").mkdir()
    remote = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    ctx = _patched_context(monkeypatch, "runs", storage_filesystem=remote)
    ckpt = _epoch_folder(tmp_path / "scratch")
    persisted = ctx.persist_current_checkpoint(ckpt)
    assert getattr(StorageContext.persist_current_checkpoint, checkpoint_move._PATCHED)
    assert _holds_the_files(ckpt.path)  # Tune's copy: the source is still there
    assert _holds_the_files(str(tmp_path / "bucket" / persisted.path))
