"""The driver's own record of every trial and epoch, and the live progress line.

Tune's result files can lose rows across a restore, so the driver keeps its own, under
``<run>/records/`` (the layout: :mod:`results.frames`): one ``epochs`` row per epoch a trial
ran, with the attempt that ran it (``attempt``: this driver's session, the worker's host and
process id), and one ``trials`` row per trial when it finishes, and for every trial at the end
of the stage. Rows are only ever added, one new object per cell and batch.

**Exactly once.** A stage continues from Tune's last uploaded experiment snapshot
(:mod:`search.snapshots`), so a row is published only once such a snapshot covers it; a row
published earlier could be of an epoch that the resumed trial then runs again. An epoch row
first waits for its checkpoint (Tune registers it after the result: a snapshot in between
would resume the trial before that epoch), then for the next snapshot, which holds the rows
it covers as this callback's state: a driver killed between the upload and the publishing
leaves them to the driver that resumes the stage, and nothing a killed driver published is
run or written again.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import pyarrow.fs as pafs
from ray.tune import Callback

from cxrkd.results.frames import (
    cell_folder,
    compact_records,
    read_record_file,
    record_files,
    write_record_object,
)
from cxrkd.search.cells import cell_budget, cell_epochs
from cxrkd.trainables import storage
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

SKIP_RESULT_KEYS = {
    "config",
    "date",
    "hostname",
    "node_ip",
    "pid",
    "time_since_restore",
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "should_checkpoint",
    "done",
    "trial_id",
}
# Which worker process ran an epoch (Tune adds them to every result); an epoch row keeps them.
ATTEMPT_KEYS = ("hostname", "node_ip", "pid")


def _error_text(trial) -> str | None:
    """The trial's error trace. Tune writes it to the trial's local folder first and copies it
    to the run's storage later, so when ``on_trial_error`` fires the storage copy (all that
    ``trial.get_error()`` reads) may not exist yet."""
    local = trial.error_file
    if local and os.path.isfile(local):
        with open(local, encoding="utf-8", errors="replace") as f:
            return f.read()
    return trial.get_error()


def error_line(trial) -> str | None:
    text = _error_text(trial)
    if not text:
        return None
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return lines[-1][:500] if lines else None


class RecordsCallback(Callback):
    def __init__(self, *, run_uri: str, study: str) -> None:
        self.run_uri, self.study = run_uri, study
        self.trials: dict[str, object] = {}
        self.errors: dict[str, str | None] = {}
        self.session = ""  # this driver's, in every attempt it records (setup)
        self._unsaved: dict[str, dict] = {}  # trial -> epoch row, its checkpoint not registered
        self._pending: list[tuple[str, dict]] = []  # (kind, row) for the next snapshot
        self._staged: list[tuple[str, dict]] = []  # what the snapshot being uploaded holds
        self._restored: list[tuple[str, dict]] | None = None  # set_state, until a first step

    def setup(self, **info) -> None:
        self.session = uuid.uuid4().hex[:12]  # a pid may come back in a later driver

    def _ids(self, trial) -> dict:
        config = trial.config
        return {
            "study": self.study,
            "stage": config[STAGE_KEY],
            "cell": config[CELL_KEY],
            "method": config["method"],
            "trial_id": trial.trial_id,
        }

    # --- what happens ------------------------------------------------------------------

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.trials[trial.trial_id] = trial
        row = {**self._ids(trial), **{k: v for k, v in result.items() if k not in SKIP_RESULT_KEYS}}
        row.update({k: result.get(k) for k in ATTEMPT_KEYS})
        host, pid = result.get("hostname"), result.get("pid")
        row.update(attempt=f"{self.session}/{host}/{pid}", recorded_at=time.time())
        if result.get("should_checkpoint"):
            self._unsaved[trial.trial_id] = row  # until Tune registers its checkpoint
        else:
            self._pending.append(("epochs", row))

    def on_trial_save(self, iteration, trials, trial, **info) -> None:
        row = self._unsaved.pop(trial.trial_id, None)
        if row is not None:
            self._pending.append(("epochs", row))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # Retried from its registered checkpoint: an epoch whose checkpoint never was runs again.
        self._unsaved.pop(trial.trial_id, None)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.trials[trial.trial_id] = trial
        # Tune marks the trial TERMINATED only after its callbacks.
        self._pending.append(("trials", self.trial_row(trial, status="TERMINATED")))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.trials[trial.trial_id] = trial
        self._unsaved.pop(trial.trial_id, None)
        self.errors[trial.trial_id] = error_line(trial)
        self._pending.append(("trials", self.trial_row(trial, status="ERROR")))

    # --- the snapshot: Tune saves this state with it, search.snapshots says when it is up ----

    def get_state(self) -> dict | None:
        self._staged = list(self._pending)
        return {"unpublished": [list(item) for item in self._staged]} if self._staged else None

    def set_state(self, state: dict) -> None:
        """The snapshot a stage continues from: the rows it covered, perhaps not published.
        They are published when the restored trials are known (:meth:`on_step_begin`)."""
        self._restored = [(kind, row) for kind, row in state.get("unpublished", [])]

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._restored is not None:
            self._publish_restored(trials)

    def _publish_restored(self, trials) -> None:
        restored, self._restored = self._restored or [], None
        # Tune restores the trials from the newest experiment state on the run storage but
        # this state from the driver's staging folder, where a killed driver attached to the
        # same Ray may have left a newer one that never reached the storage. Rows ahead of
        # the restored trials are run again (and recorded then); in a consistent snapshot
        # there are none.
        covered = {t.trial_id: _covered(t) for t in trials}
        keep = [
            (kind, row)
            for kind, row in restored
            if row["trial_id"] in covered
            and (row["epoch"] <= covered[row["trial_id"]][0] if kind == "epochs"
                 else covered[row["trial_id"]][1])
        ]  # fmt: skip
        self._pending = self._publish(keep) + self._pending

    def uncommitted(self) -> bool:
        """Whether rows wait for a snapshot (``search.snapshots`` then takes one sooner)."""
        return bool(self._pending)

    def on_snapshot_saved(self) -> None:
        staged, self._staged = self._staged, []
        left = self._publish(staged)  # what could not be written: in the next snapshot too
        done = {id(item) for item in staged} - {id(item) for item in left}
        self._pending = [item for item in self._pending if id(item) not in done]

    def _publish(self, items: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
        """One object per (kind, cell); returns the items that could not be written."""
        groups: dict[tuple[str, str, str], list[tuple[str, dict]]] = {}
        for item in items:
            groups.setdefault((item[0], item[1]["stage"], item[1]["cell"]), []).append(item)
        left = []
        for (kind, stage, cell), group in groups.items():
            try:
                write_record_object(self.run_uri, kind, stage, cell, [r for _, r in group])
            except Exception as exc:  # storage away for a moment: the next snapshot retries
                print(f"[{stage}] could not write records ({type(exc).__name__}: {exc}); "
                      "retrying with the next snapshot", file=sys.stderr, flush=True)  # fmt: skip
                left.extend(group)
        return left

    def on_experiment_end(self, trials, **info) -> None:
        if self._restored is not None:  # a restored stage with nothing left to run
            self._publish_restored(trials)
        for trial in trials:
            self.trials[trial.trial_id] = trial
            if trial.status == "ERROR" and not self.errors.get(trial.trial_id):
                self.errors[trial.trial_id] = error_line(trial)
        if self._pending:
            return  # Tune stopped without its final snapshot: the resumed stage redoes it
        # The final snapshot is up: every trial as it ends this experiment (on Ctrl-C some
        # are still running), then each cell's objects merged into one.
        self._publish([("trials", self.trial_row(t)) for t in trials])
        known = {trial.trial_id for trial in trials}
        for stage in dict.fromkeys(t.config[STAGE_KEY] for t in trials):
            compact_records(self.run_uri, stage=stage)
            prune_legacy_records(self.run_uri, stage, known)

    def trial_row(self, trial, *, status: str | None = None) -> dict:
        """The trial's row; ``status``: Tune's, when the trial does not have it yet."""
        last = trial.last_result or {}
        reached = int(last.get("epoch", 0))
        planned = int(trial.config["epochs"])
        status = {
            "TERMINATED": "stopped" if reached < planned else "completed",
            "ERROR": "errored",
        }.get(status or trial.status, "running")
        row = {**self._ids(trial), "status": status, "error": self.errors.get(trial.trial_id)}
        row.update({f"config/{k}": v for k, v in trial.config.items()
                    if k not in (CELL_KEY, STAGE_KEY)})  # fmt: skip
        row.update({k: v for k, v in last.items() if k not in SKIP_RESULT_KEYS})
        # The report reads the final models' test scores from here (results/held_out_scores.py).
        row["checkpoint_uri"] = checkpoint_uri(trial.checkpoint)
        row["recorded_at"] = time.time()  # the newest row of a trial is its state
        return row


def _covered(trial) -> tuple[int, bool]:
    """What a restored trial has done: the epoch of the checkpoint it resumes from, and
    whether it is finished."""
    latest = trial.latest_checkpoint_result
    epoch = int((latest.metrics if latest else {}).get("epoch", 0))
    return epoch, trial.status in ("TERMINATED", "ERROR")


def checkpoint_uri(checkpoint) -> str | None:
    """A Tune checkpoint as a URI that ``trainables.storage`` opens (``s3://...`` or a path)."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


def records_uri(run_uri: str, kind: str, stage: str, cell: str) -> str:
    """The folder of one cell's ``kind`` records (only the driver writes there)."""
    return cell_folder(run_uri, kind, stage, cell)


def prune_legacy_records(run_uri: str, stage: str, known: set[str]) -> None:
    """Files of the old layout (a run started by an earlier cxrkd): drop the stage's rows of
    trials its experiment does not know, ones a killed driver started after Tune's last
    snapshot (the resumed searcher hands their budget out again, under new trial ids). The
    new layout never holds such rows: they are published after the snapshot."""
    for record in record_files(run_uri, stage=stage):
        if record.legacy:
            frame = read_record_file(record.uri)
            keep = frame["trial_id"].isin(known)
            if not keep.all():
                storage.write_parquet(record.uri, frame[keep])


class ProgressCallback(Callback):
    """One line per finished trial (and at most every ``every_s``): each stage's trials done
    of those its open cells will run, the best value so far, and an upper bound of the time
    left."""

    def __init__(self, *, searcher, metric: str, every_s: float = 20):
        self.searcher, self.metric = searcher, metric  # the study's CellSearcher
        self.every_s, self.last_print = every_s, 0.0
        self.best: tuple[float, str] | None = None
        self.epoch_s, self.epochs_seen = 0.0, 0  # a running mean: nothing kept per epoch

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "epoch_s" in result:
            self.epoch_s += float(result["epoch_s"])
            self.epochs_seen += 1
        value = result.get(self.metric)
        if value is not None and value == value and (self.best is None or value > self.best[0]):
            self.best = (float(value), trial.config[CELL_KEY])
        if time.monotonic() - self.last_print > self.every_s:
            self.print_line(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.print_line(trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(
            f"[{trial.config[STAGE_KEY]}] trial {trial.trial_id} ({trial.config[CELL_KEY]}) "
            f"errored: {error_line(trial)}",
            file=sys.stderr,
            flush=True,
        )
        self.print_line(trials)

    def print_line(self, trials) -> None:
        self.last_print = time.monotonic()
        totals: dict[str, int] = {}
        for cid, cell in self.searcher.cells.items():
            stage = self.searcher.stage_of[cid]
            totals[stage] = totals.get(stage, 0) + cell_budget(cell)
        done = {stage: 0 for stage in totals}
        for t in trials:
            if t.status in ("TERMINATED", "ERROR"):
                done[t.config[STAGE_KEY]] = done.get(t.config[STAGE_KEY], 0) + 1
        running = sum(t.status == "RUNNING" for t in trials)
        counts = ", ".join(f"{stage} {done[stage]}/{n}" for stage, n in totals.items())
        best = f"best {self.metric}={self.best[0]:.3f} ({self.best[1]})" if self.best else ""
        left = sum(totals.values()) - sum(done.values())
        print(
            f"[study] trials done: {counts}; {running} running  {best}  {self.eta(left, running)}",
            file=sys.stderr,
            flush=True,
        )

    def eta(self, left: int, running: int) -> str:
        if not self.epochs_seen or left <= 0:
            return ""
        per_epoch = self.epoch_s / self.epochs_seen
        epochs = max(cell_epochs(c, default=1)[0] for c in self.searcher.cells.values())
        # Upper bound: the open cells' remaining trials run every epoch; ASHA usually stops
        # some early (and cells not open yet are not counted).
        return f"~{left * epochs * per_epoch / max(running, 1) / 60:.1f} min left (at most)"
