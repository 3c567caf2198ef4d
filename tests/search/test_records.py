"""The driver's records, without Ray: the callback fed as Tune feeds it (fake trials), the
snapshot that commits its rows, a resumed driver, compaction, both layouts, S3 (moto).

The real thing under kills: tests/search/test_resume.py and test_torture.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from test_s3_storage import s3  # noqa: F401  (the moto S3 fixture)

import cxrkd.results.frames as frames
from cxrkd.results.frames import (
    compact_records,
    load_raw_records,
    load_records,
    record_files,
    repeated_epochs,
)
from cxrkd.search.records import RecordsCallback
from cxrkd.search.run_state import check_records
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError

STAGE, CELL = "search", "cnn"


@dataclass
class FakeTrial:
    """What the callback reads of a Tune trial."""

    trial_id: str
    epochs: int = 3
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)
    checkpoint: object = None
    error_file: str | None = None
    latest_checkpoint_result: object = None

    @property
    def config(self) -> dict:
        return {"cell": CELL, "stage": STAGE, "method": "cnn_baseline", "epochs": self.epochs,
                "lr": 0.01}  # fmt: skip

    def get_error(self) -> None:
        return None

    def restored_at(self, epoch: int, status: str = "PENDING") -> FakeTrial:
        """This trial as Tune restores it: from its checkpoint of ``epoch``."""
        metrics = {"epoch": epoch}
        return FakeTrial(self.trial_id, self.epochs, status, metrics, None, None,
                         SimpleNamespace(metrics=metrics))  # fmt: skip


def result(epoch: int, *, pid: int = 100, auc: float | None = None) -> dict:
    """One epoch's result as Tune hands it to callbacks (with its own keys)."""
    return {"epoch": epoch, "val_auc": auc if auc is not None else 0.5 + epoch / 100,
            "pid": pid, "hostname": "node-a", "node_ip": "10.0.0.1", "should_checkpoint": True,
            "done": False, "training_iteration": epoch, "config": {"cell": CELL},
            "time_this_iter_s": 0.1}  # fmt: skip


def driver(run: str) -> RecordsCallback:
    callback = RecordsCallback(run_uri=run, study="probe")
    callback.setup()
    return callback


def epoch(callback: RecordsCallback, trial: FakeTrial, n: int, **kw) -> None:
    """Tune's events for one epoch: the result, then its checkpoint registered."""
    trial.last_result = result(n, **kw)
    callback.on_trial_result(0, [trial], trial, dict(trial.last_result))
    callback.on_trial_save(0, [trial], trial)


def snapshot(callback: RecordsCallback) -> dict | None:
    """A snapshot saved and uploaded (``search.snapshots`` calls on_snapshot_saved)."""
    state = callback.get_state()
    callback.on_snapshot_saved()
    return state


def raw_epochs(run: str) -> pd.DataFrame:
    return load_raw_records(run)[1]


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*.parquet"))}


def test_an_epoch_is_published_once_a_snapshot_covering_its_checkpoint_is_uploaded(tmp_path):
    run, trial = str(tmp_path / "run"), FakeTrial("t1")
    records = driver(run)
    trial.last_result = result(1)
    records.on_trial_result(0, [trial], trial, dict(trial.last_result))
    # Tune registers the checkpoint after the result: a snapshot in between does not cover it.
    assert snapshot(records) is None and raw_epochs(run).empty
    assert not records.uncommitted()  # nothing a snapshot should hurry for
    records.on_trial_save(0, [trial], trial)
    assert records.uncommitted()
    state = records.get_state()
    assert [row["epoch"] for _, row in state["unpublished"]] == [1]
    assert raw_epochs(run).empty  # saved, not yet uploaded
    records.on_snapshot_saved()
    rows = raw_epochs(run)
    assert rows["epoch"].tolist() == [1]
    assert rows[["pid", "hostname", "node_ip"]].values.tolist() == [[100, "node-a", "10.0.0.1"]]
    assert rows["attempt"].tolist() == [f"{records.session}/node-a/100"]
    assert records.get_state() is None and not records.uncommitted()  # all published


def test_records_are_only_added_never_rewritten(tmp_path):
    """The old driver rewrote its cell's whole epochs file on every epoch."""
    run, trials = tmp_path / "run", [FakeTrial(f"t{i}", epochs=4) for i in range(3)]
    records, seen = driver(str(run)), {}
    for n in range(1, 5):
        for trial in trials:
            epoch(records, trial, n)
            snapshot(records)
            now = files(run)
            assert {k: now[k] for k in seen} == seen, "a records object was rewritten"
            assert len(now) == len(seen) + 1  # one small object per batch
            seen = now
    assert len(raw_epochs(str(run))) == 12


def test_a_resumed_driver_publishes_what_its_snapshot_covered_and_nothing_twice(tmp_path):
    run, trial = str(tmp_path / "run"), FakeTrial("t1", epochs=4)
    first = driver(run)
    epoch(first, trial, 1)
    snapshot(first)
    epoch(first, trial, 2)
    covered = first.get_state()  # uploaded, then the driver is killed before publishing
    epoch(first, trial, 3)  # after that snapshot: the resumed trial runs it again
    before = files(Path(run))
    assert raw_epochs(run)["epoch"].tolist() == [1]

    second = driver(run)  # Tune unpickles the callbacks, then restores their state
    second.set_state(covered)
    second.on_step_begin(0, [trial.restored_at(2)])
    assert {k: v for k, v in files(Path(run)).items() if k in before} == before
    for n in (3, 4):
        epoch(second, trial, n, pid=200)
        snapshot(second)
    rows = raw_epochs(run).sort_values("epoch")
    assert rows["epoch"].tolist() == [1, 2, 3, 4]
    assert (
        rows["attempt"].tolist()
        == [f"{first.session}/node-a/100"] * 2 + [f"{second.session}/node-a/200"] * 2
    )
    assert repeated_epochs(rows).empty


def test_rows_ahead_of_the_restored_trials_wait_for_their_rerun(tmp_path):
    """Tune restores the trials from the run storage but callback states from the staging
    folder: a killed driver attached to the same Ray can leave a newer one there."""
    run, trial = str(tmp_path / "run"), FakeTrial("t1", epochs=3)
    first = driver(run)
    epoch(first, trial, 1)
    epoch(first, trial, 2)
    first.on_trial_complete(0, [trial], trial)
    newer = first.get_state()  # never uploaded; the storage's snapshot has the trial at 1
    second = driver(run)
    second.set_state(newer)
    second.on_step_begin(0, [trial.restored_at(1)])
    assert raw_epochs(run)["epoch"].tolist() == [1]
    assert load_records(run)[0].empty  # the trial is not finished in the restored state


def test_the_end_of_a_stage_publishes_every_trial_and_compacts_each_cell(tmp_path):
    run, trials = str(tmp_path / "run"), [FakeTrial("t1", epochs=2), FakeTrial("t2", epochs=2)]
    records = driver(run)
    for n in (1, 2):
        for trial in trials:
            epoch(records, trial, n)
            snapshot(records)
    records.on_trial_complete(0, trials, trials[0])  # Tune marks it TERMINATED after this
    snapshot(records)
    trials_frame = load_records(run)[0]  # while the stage runs: t1 is done
    assert trials_frame[["trial_id", "status"]].values.tolist() == [["t1", "completed"]]
    trials[0].status = "TERMINATED"
    records.on_experiment_end(trials)  # after Tune's final snapshot (on Ctrl-C: t2 running)
    assert [(f.kind, f.cell) for f in record_files(run)] == [("epochs", CELL), ("trials", CELL)]
    trials_frame, epochs_frame = load_records(run)
    assert dict(zip(trials_frame["trial_id"], trials_frame["status"], strict=True)) == {
        "t1": "completed",
        "t2": "running",
    }
    assert len(epochs_frame) == 4


def test_compaction_keeps_a_double_run_visible_and_loses_rows_added_meanwhile(
    tmp_path, monkeypatch
):
    run, trial = str(tmp_path / "run"), FakeTrial("t1")
    first, second = driver(run), driver(run)
    for n in (1, 2):
        epoch(first, trial, n)
        snapshot(first)
    epoch(second, trial, 2, pid=200, auc=0.9)  # epoch 2 run again by another attempt
    snapshot(second)
    twice = repeated_epochs(raw_epochs(run))
    assert twice[["trial_id", "epoch"]].values.tolist() == [["t1", 2]]
    assert len(twice["attempts"].iloc[0]) == 2

    read = frames._read_table

    def read_then_driver_adds_one(uri):  # the driver publishes while `cxrkd report` compacts
        if not late:
            late.append(True)
            epoch(second, trial, 3, pid=200)
            snapshot(second)
        return read(uri)

    late: list[bool] = []
    monkeypatch.setattr(frames, "_read_table", read_then_driver_adds_one)
    assert compact_records(run) == 3
    monkeypatch.undo()
    assert len(record_files(run)) == 2  # the merged object and the one added meanwhile
    assert sorted(raw_epochs(run)["epoch"]) == [1, 2, 2, 3]
    assert repeated_epochs(raw_epochs(run))[["trial_id", "epoch"]].values.tolist() == [["t1", 2]]
    kept = load_records(run)[1]
    assert kept["epoch"].tolist() == [1, 2, 3]
    assert kept.loc[kept["epoch"] == 2, "val_auc"].item() == 0.9  # the newest attempt


def test_both_layouts_are_read_and_a_damaged_object_is_named(tmp_path):
    run = tmp_path / "run"
    legacy = pd.DataFrame([{"study": "probe", "stage": "teacher", "cell": "c", "method": "m",
                            "trial_id": "t0", "epoch": 1, "val_auc": 0.6}])  # fmt: skip
    (run / "records").mkdir(parents=True)
    legacy.to_parquet(run / "records" / "epochs-teacher--c.parquet")
    records, trial = driver(str(run)), FakeTrial("t1")
    epoch(records, trial, 1)
    snapshot(records)
    epochs_frame = load_records(str(run))[1]
    assert sorted(zip(epochs_frame["stage"], epochs_frame["trial_id"], strict=True)) == [
        ("search", "t1"),
        ("teacher", "t0"),
    ]
    check_records(str(run))
    (obj,) = (run / "records" / "epochs").rglob("*.parquet")
    obj.write_bytes(obj.read_bytes()[:20])
    for read in (check_records, load_records):
        with pytest.raises(CxrkdError, match=rf"{obj} is damaged .*restore it from a backup"):
            read(str(run))


def test_records_on_s3(s3):  # noqa: F811
    run = storage.join(s3.root, "runs", "r1")
    records, trial = driver(run), FakeTrial("t1", epochs=2)
    for n in (1, 2):
        epoch(records, trial, n)
        snapshot(records)
    records.on_trial_complete(0, [trial], trial)
    snapshot(records)
    trial.status = "TERMINATED"

    def objects(prefix: str) -> list[str]:  # not the folder markers pyarrow puts
        return [o for o in s3.objects(prefix) if o.endswith(".parquet")]

    assert len(objects("runs/r1/records/epochs/")) == 2
    records.on_experiment_end([trial])
    assert [o.rsplit("/", 1)[0] for o in objects("runs/r1/records/")] == [
        "runs/r1/records/epochs/search--cnn",
        "runs/r1/records/trials/search--cnn",
    ]
    check_records(run)
    trials_frame, epochs_frame = load_records(run)
    assert trials_frame["status"].tolist() == ["completed"]
    assert epochs_frame["epoch"].tolist() == [1, 2]
