"""A study's commit point: Tune's experiment snapshot, once it is on the run storage.

A study continues from the newest experiment snapshot in its folder (``Tuner.restore``):
each unfinished trial from the checkpoint that snapshot names, the searcher and the scheduler
as they were. Tune takes a snapshot every 10 s or so (``TUNE_GLOBAL_CHECKPOINT_S``, "auto":
at most 5% of the driver's time) and uploads it in the background, so whatever happened after
the last uploaded snapshot is undone by a driver killed at that moment: the resumed trial runs
those epochs again. Two things must therefore wait until a snapshot that covers them is
uploaded:

- **Deleting a checkpoint.** Tune deletes a trial's older checkpoints as soon as it registers
  a newer one (``CheckpointConfig(num_to_keep)``); a driver killed before the next upload
  would resume the trial from a checkpoint that is gone (the trial errors).
- **Publishing records.** An epoch recorded before the snapshot that covers it, and run again
  by the resumed trial, would be recorded twice, by two attempts (``search.records``).
- **Choosing a cell's configuration** once its trials have ended (``search.study_run``): a
  resumed driver must find them ended too.

:func:`durable_snapshots` patches ``TuneController.checkpoint`` (where Tune takes and uploads
its snapshots) so that each snapshot waits for its upload, then deletes the checkpoints Tune
let go of before it and calls ``on_snapshot_saved()`` on every callback that has one; while
such a callback has rows waiting (``uncommitted()``), snapshots come every
:data:`COMMIT_PERIOD_S` seconds rather than every 10, so records follow the trials closely.
"""

from __future__ import annotations

import contextlib
import logging
import time

logger = logging.getLogger(__name__)

# While records wait for a snapshot, one is taken at least this often (Tune's own period is
# 10 s or more), unless snapshots cost more than 5% of the driver's time.
COMMIT_PERIOD_S = 2.0


def _uploaded(storage, *, since: float) -> bool:
    """Wait until the snapshot saved after ``since`` is on the run storage; False (with a
    warning) when its upload failed. Tune starts the upload after the save, unless an older
    upload was still running: then this one is finished first and the snapshot uploaded."""
    syncer = storage.syncer
    process = syncer._sync_process
    try:
        if process is None or process.start_time < since:
            syncer.wait()
            syncer.sync_up(storage.experiment_driver_staging_path, storage.experiment_fs_path)
        syncer.wait()
    except Exception:
        logger.warning("uploading the experiment snapshot failed; the next one tries again",
                       exc_info=True)  # fmt: skip
        return False
    return True


@contextlib.contextmanager
def durable_snapshots():
    """While Tune runs a study: a checkpoint Tune drops is deleted, and ``on_snapshot_saved``
    callbacks are called, only after a snapshot taken later is on the run storage. Every
    snapshot waits for its upload (Tune waits only for the last one): a few milliseconds on
    local storage, about one request per file on S3."""
    from ray.train._internal import checkpoint_manager
    from ray.tune.execution.tune_controller import TuneController

    tune_checkpoint = TuneController.checkpoint
    tune_delete = checkpoint_manager._delete_fs_path
    dropped: list[tuple[object, str]] = []  # (filesystem, path) Tune let go of, not deleted

    def defer_delete(fs, fs_path: str) -> None:
        dropped.append((fs, fs_path))

    cost = [0.0]  # seconds the last snapshot took, saved and uploaded

    def checkpoint(self, force: bool = False, wait: bool = False) -> None:
        saved_at, doomed = self._checkpoint_manager._last_save_time, len(dropped)
        listeners = [c for c in self._callbacks._callbacks if hasattr(c, "on_snapshot_saved")]
        # Records wait for a snapshot: one is taken when some wait and the last is old enough,
        # at most 5% of the driver's time (Tune's own rule, with a shorter floor than its 10 s).
        due = time.monotonic() - saved_at >= max(COMMIT_PERIOD_S, 19 * cost[0])
        force = force or (due and any(c.uncommitted() for c in listeners))
        started = time.time()
        tune_checkpoint(self, force=force, wait=False)  # waited for below, when it saved
        if self._checkpoint_manager._last_save_time == saved_at:
            return  # no snapshot this time
        uploaded = _uploaded(self._storage, since=started)
        cost[0] = time.time() - started
        if not uploaded:
            return
        # Dropped before this snapshot: a newer checkpoint of the trial was registered, and
        # this snapshot names it.
        for fs, path in dropped[:doomed]:
            tune_delete(fs=fs, fs_path=path)
        del dropped[:doomed]
        for callback in listeners:
            callback.on_snapshot_saved()

    tune_update = TuneController._update_trial_queue

    def update_trial_queue(self, blocking: bool = False, timeout: float = 600) -> bool:
        """Never block. With no trial pending or running and none from the searcher, Tune
        waits here (up to ``timeout``, taking no snapshot and calling no callback); in a
        study that is when cells wait for the snapshot that says their trials ended
        (:class:`search.study_run.StudyDriver`): take it now, then ask again."""
        if tune_update(self, blocking=False):
            return True
        listeners = [c for c in self._callbacks._callbacks if hasattr(c, "uncommitted")]
        if blocking and any(c.uncommitted() for c in listeners):
            self.checkpoint(force=True)
            return tune_update(self, blocking=False)
        return False

    TuneController.checkpoint = checkpoint
    TuneController._update_trial_queue = update_trial_queue
    checkpoint_manager._delete_fs_path = defer_delete
    try:
        yield
    finally:
        TuneController.checkpoint = tune_checkpoint
        TuneController._update_trial_queue = tune_update
        checkpoint_manager._delete_fs_path = tune_delete
