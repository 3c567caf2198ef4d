"""Each epoch's checkpoint moved, not copied, into a run folder on the trial's own disk.

A trial writes an epoch's checkpoint to a scratch folder, reports it (``tune.report``), and
deletes the scratch folder once Tune has persisted it (``trainables.trainable``). Ray Tune
persists by copying every file (``StorageContext.persist_current_checkpoint``): for a run
folder on the same filesystem as the scratch folder (a single machine, the tests, the demo)
that writes each checkpoint twice, and a ViT-Base one with its optimiser state is about 1 GB
per epoch. There, :func:`move_local_checkpoints` makes Tune rename the folder into place
instead; the folder Tune records, and every file in it, are the same as a copy would give.
Anywhere else (S3, another filesystem, a folder already there) Tune copies, as before.
"""

from __future__ import annotations

import errno
import os

_PATCHED = "_cxrkd_moves_local_checkpoints"  # set on our replacement of Tune's method


def _both_local(storage, checkpoint) -> bool:
    """Whether the run folder and the checkpoint are both on local filesystems (whether on the
    same one, ``os.rename`` tells: EXDEV)."""
    from pyarrow.fs import LocalFileSystem

    return isinstance(storage.storage_filesystem, LocalFileSystem) and isinstance(
        checkpoint.filesystem, LocalFileSystem
    )


def move_local_checkpoints() -> None:
    """In this (trial) process, from now on: a reported checkpoint folder on the same local
    filesystem as the run folder is renamed into the run folder. Idempotent."""
    from ray.train._internal.storage import StorageContext

    copy = StorageContext.persist_current_checkpoint
    if getattr(copy, _PATCHED, False):
        return

    def persist_current_checkpoint(self, checkpoint):
        if not _both_local(self, checkpoint):
            return copy(self, checkpoint)
        self._check_validation_file()  # as Tune does: the run folder must be reachable
        dest = self.checkpoint_fs_path
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            os.rename(checkpoint.path, dest)  # fails if dest exists: never merged into
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EEXIST, errno.ENOTEMPTY):
                raise
            return copy(self, checkpoint)  # another filesystem, or a folder already there
        return checkpoint.__class__(filesystem=self.storage_filesystem, path=dest)

    setattr(persist_current_checkpoint, _PATCHED, True)
    StorageContext.persist_current_checkpoint = persist_current_checkpoint
