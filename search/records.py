"""The driver's own record of every trial and epoch, and the live progress line.

Tune's result files can lose rows across a restore, so the driver keeps its own: one
``epochs`` row per reported epoch (deduplicated by ``(trial_id, epoch)`` when read) and one
``trials`` row per trial, written to ``<run>/records/`` as
``{trials,epochs}-<stage>--<cell>.parquet``: epochs as they are reported, trials after each
finished trial and at the end of a stage.
"""

from __future__ import annotations

import os
import sys
import time

import pandas as pd
import pyarrow.fs as pafs
from ray.tune import Callback

from search.run_state import read_records_file
from trainables import storage
from trainables.trainable import CELL_KEY

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


def _error_text(trial) -> str | None:
    """The trial's error trace. Tune writes it to the trial's local folder first and copies it
    to the run's storage later, so when ``on_trial_error`` fires the storage copy (all that
    ``trial.get_error()`` reads) may not exist yet."""
    local = trial.error_file
    if local and os.path.isfile(local):
        with open(local, encoding="utf-8", errors="replace") as f:
            return f.read()
    return trial.get_error()


def _error_line(trial) -> str | None:
    text = _error_text(trial)
    if not text:
        return None
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return lines[-1][:500] if lines else None


class RecordsCallback(Callback):
    def __init__(self, *, run_uri: str, study: str, stage: str) -> None:
        self.run_uri, self.study, self.stage = run_uri, study, stage
        self.trials: dict[str, object] = {}
        self.errors: dict[str, str | None] = {}

    def _ids(self, trial) -> dict:
        config = trial.config
        return {
            "study": self.study,
            "stage": self.stage,
            "cell": config[CELL_KEY],
            "method": config["method"],
            "trial_id": trial.trial_id,
        }

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = {**self._ids(trial), **{k: v for k, v in result.items() if k not in SKIP_RESULT_KEYS}}
        # Written at once, not when the trial ends: a driver killed mid-trial would lose the
        # epochs its checkpoint already covers (the resumed trial goes on after them).
        cell = trial.config[CELL_KEY]
        write_records(self.run_uri, "epochs", self.stage, cell, pd.DataFrame([row]))
        self.trials[trial.trial_id] = trial

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.trials[trial.trial_id] = trial
        self.flush()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.trials[trial.trial_id] = trial
        self.errors[trial.trial_id] = _error_line(trial)
        self.flush()

    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:
            self.trials[trial.trial_id] = trial
            if trial.status == "ERROR" and not self.errors.get(trial.trial_id):
                self.errors[trial.trial_id] = _error_line(trial)
        self.flush()
        prune_records(self.run_uri, self.stage, {trial.trial_id for trial in trials})

    def trial_row(self, trial) -> dict:
        last = trial.last_result or {}
        reached = int(last.get("epoch", 0))
        planned = int(trial.config["epochs"])
        status = {
            "TERMINATED": "stopped" if reached < planned else "completed",
            "ERROR": "errored",
        }.get(trial.status, "running")
        row = {**self._ids(trial), "status": status, "error": self.errors.get(trial.trial_id)}
        row.update({f"config/{k}": v for k, v in trial.config.items() if k != CELL_KEY})
        row.update({k: v for k, v in last.items() if k not in SKIP_RESULT_KEYS})
        # The report reads the final models' test scores from here (results/test_scores.py).
        row["checkpoint_uri"] = checkpoint_uri(trial.checkpoint)
        return row

    def flush(self) -> None:
        by_cell: dict[str, list[dict]] = {}
        for trial in self.trials.values():
            by_cell.setdefault(trial.config[CELL_KEY], []).append(self.trial_row(trial))
        for cell, rows in by_cell.items():
            write_records(self.run_uri, "trials", self.stage, cell, pd.DataFrame(rows))


def checkpoint_uri(checkpoint) -> str | None:
    """A Tune checkpoint as a URI that ``trainables.storage`` opens (``s3://...`` or a path)."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


def records_uri(run_uri: str, kind: str, stage: str, cell: str) -> str:
    return storage.join(run_uri, "records", f"{kind}-{stage}--{cell}.parquet")


def write_records(run_uri: str, kind: str, stage: str, cell: str, frame: pd.DataFrame) -> None:
    """Merge with what an earlier (interrupted) driver wrote; the newest row wins."""
    uri = records_uri(run_uri, kind, stage, cell)
    if storage.exists(uri):
        frame = pd.concat([read_records_file(uri), frame], ignore_index=True)
    keys = ["trial_id", "epoch"] if kind == "epochs" else ["trial_id"]
    frame = frame.drop_duplicates(subset=keys, keep="last")
    storage.write_parquet(uri, frame)


def prune_records(run_uri: str, stage: str, known: set[str]) -> None:
    """Drop the stage's rows of trials its experiment does not know: ones a killed driver
    started after Tune's last snapshot. The resumed experiment never saw them and its
    searcher hands their budget out again, under new trial ids."""
    fs, root = storage.filesystem(storage.join(run_uri, "records"))
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        name = info.base_name
        if name.endswith(".parquet") and name.split("--")[0] in (
            f"trials-{stage}",
            f"epochs-{stage}",
        ):
            uri = storage.join(run_uri, "records", name)
            frame = read_records_file(uri)
            keep = frame["trial_id"].isin(known)
            if not keep.all():
                storage.write_parquet(uri, frame[keep])


class ProgressCallback(Callback):
    """One line per finished trial (and at most every ``every_s``): stage, counts, best, ETA."""

    def __init__(self, *, stage: str, total: int, epochs: int, metric: str, every_s: float = 20):
        self.stage, self.total, self.epochs, self.metric = stage, total, epochs, metric
        self.every_s, self.start, self.last_print = every_s, time.monotonic(), 0.0
        self.best: tuple[float, str] | None = None
        self.epoch_times: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "epoch_s" in result:
            self.epoch_times.append(float(result["epoch_s"]))
        value = result.get(self.metric)
        if value is not None and value == value and (self.best is None or value > self.best[0]):
            self.best = (float(value), trial.config[CELL_KEY])
        if time.monotonic() - self.last_print > self.every_s:
            self.print_line(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.print_line(trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(
            f"[{self.stage}] trial {trial.trial_id} ({trial.config[CELL_KEY]}) errored: "
            f"{_error_line(trial)}",
            file=sys.stderr,
            flush=True,
        )
        self.print_line(trials)

    def print_line(self, trials) -> None:
        self.last_print = time.monotonic()
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        best = f"best {self.metric}={self.best[0]:.3f} ({self.best[1]})" if self.best else ""
        print(
            f"[{self.stage}] trials {done}/{self.total} done, {running} running  {best}  "
            f"{self.eta(done, running)}",
            file=sys.stderr,
            flush=True,
        )

    def eta(self, done: int, running: int) -> str:
        if not self.epoch_times or done >= self.total:
            return ""
        per_epoch = sum(self.epoch_times) / len(self.epoch_times)
        # Upper bound: remaining trials run every epoch; ASHA usually stops some early.
        left = (self.total - done) * self.epochs * per_epoch / max(running, 1)
        return f"~{left / 60:.1f} min left (at most)"
