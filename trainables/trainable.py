"""The Ray Tune function trainable: ``tune.with_parameters(tune_trainable, data=bundle)``.

Every method runs through this one function; the method is a config value. Data arrives
through Ray's object store, teachers through the run storage, so nothing assumes a path shared
with the driver. Checkpoints are reported with each epoch's metrics (``tune.report``) and a
restored trial continues from ``tune.get_checkpoint()``; Tune moves each epoch's checkpoint
folder into a run folder on the trial's own disk rather than copying it
(``trainables.checkpoint_move``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import tempfile
from pathlib import Path

from cxrkd.trainables.checkpoint_move import move_local_checkpoints
from cxrkd.trainables.context import DataBundle
from cxrkd.trainables.loop import run_trial
from cxrkd.trainables.scratch import scratch_dir

# The driver tags each trial's config with its cell; it is not a training setting.
CELL_KEY = "cell"
STAGE_KEY = "stage"  # with CELL_KEY: the driver's, stripped before a trial parses its config


class TuneReporter:
    """Reports to Ray Tune; keeps a local copy of the restored checkpoint while it is used."""

    def __init__(self) -> None:
        self._restored: Path | None = None

    def restore_dir(self) -> Path | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        self._restored = scratch_dir("restore")
        return Path(ckpt.to_directory(str(self._restored)))

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        import ray
        from ray import tune

        # Which Ray node ran the epoch: hostname/node_ip cannot tell nodes of one machine
        # apart, and a restored trial may move to another node.
        metrics = {
            **metrics,
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": device_name(),  # trials.parquet says which GPU (or CPU) ran each trial
        }
        try:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
        finally:
            # Tune has persisted it to the run storage before it returns, or raises SystemExit
            # when it stops the trial (ASHA, the last epoch, the end of a stage): without the
            # `finally` every stopped trial left its last checkpoint in /tmp. The loop's empty
            # work folder goes too (the next epoch's save creates it again).
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                checkpoint_dir.parent.rmdir()
            self.close()  # the restored copy was loaded before the first epoch ran

    def close(self) -> None:
        """Delete the local copy of the restored checkpoint (also when the trial errors
        before its first report)."""
        if self._restored is not None:
            shutil.rmtree(self._restored, ignore_errors=True)
            self._restored = None


@functools.cache
def device_name() -> str:
    """What the trial trains on (the device ``run_trial`` picks): the GPU's name, else the
    CPU's model name (``/proc/cpuinfo``, else ``platform``)."""
    import torch

    from cxrkd.trainables.loop import pick_device

    device = pick_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo", errors="replace") as f:
        for line in f:
            if line.lower().startswith("model name") and ":" in line:
                return "CPU: " + line.split(":", 1)[1].strip()
    return "CPU: " + (platform.processor() or platform.machine() or "unknown")


def tune_trainable(config: dict, data: DataBundle) -> None:
    """``data`` is the bundle, or the ObjectRef the driver put it in once (shared by every
    stage's experiment and by the teacher-output task)."""
    import ray

    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    move_local_checkpoints()  # a run folder on this disk: each epoch's folder renamed, not copied
    threads = os.environ.get("CXRKD_TRIAL_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    config = {k: v for k, v in config.items() if k not in (CELL_KEY, STAGE_KEY)}
    reporter = TuneReporter()
    try:
        run_trial(config, data, reporter=reporter)
    finally:
        reporter.close()


class LocalReporter:
    """Keeps reports in memory and checkpoints on local disk: tests, benchmarks, GPU checks.

    Checkpoints are moved into ``keep``; without it, into a temporary folder that is deleted
    with the reporter (left in the loop's folders, every run's checkpoints stayed in /tmp).
    """

    def __init__(self, restore: Path | None = None, keep: Path | None = None) -> None:
        self.rows: list[dict] = []
        self.checkpoints: list[Path] = []
        self._restore = restore
        self._tmp = tempfile.TemporaryDirectory(prefix="cxrkd-local-") if keep is None else None
        self._keep = Path(self._tmp.name) if self._tmp is not None else keep

    def restore_dir(self) -> Path | None:
        return self._restore

    def report(self, metrics: dict, checkpoint_dir: Path) -> None:
        self.rows.append(dict(metrics))
        if self._keep is not None:
            dest = self._keep / checkpoint_dir.name
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            checkpoint_dir = dest
        self.checkpoints.append(checkpoint_dir)
