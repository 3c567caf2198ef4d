"""Watching a search live (issue 12, item 5): each search cell's Optuna study in RDB storage
while the run goes (``search.optuna_live``), ``--optuna-storage``, ``--ray-dashboard``, and
the end-of-run lines saying where everything is.

The mirror is driven with fake Tune trials (no Ray) through the callback's hooks, in Tune's
order, and compared with the end-of-run export of the same records. The real run whose SQLite
storage is read while its driver still runs is in test_watch_live.py.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import pytest
from cli_checks import fails
from optuna.trial import TrialState

from cxrkd.results.optuna_export import cell_studies, study_distributions, study_name
from cxrkd.search import optuna_live, ray_runtime
from cxrkd.search.optuna_live import LiveStudies, OptunaMirror, check_url, live_url, mirroring
from cxrkd.search.records import RecordsCallback
from cxrkd.spaces.studies import get_study
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

STUDY = get_study("pneumonia-kd", "demo")
CELL = ("search", "baseline_cnn")


@dataclass
class FakeTrial:
    """What the records callback and the mirror read of a Tune trial."""

    trial_id: str
    lr: float
    status: str = "RUNNING"
    epochs: int = 3
    last_result: dict = field(default_factory=dict)
    checkpoint: object = None

    @property
    def config(self) -> dict:
        return {STAGE_KEY: CELL[0], CELL_KEY: CELL[1], "method": "baseline", "lr": self.lr,
                "weight_decay": 1e-4, "dropout": 0.25, "epochs": self.epochs}  # fmt: skip


class Session:
    """One driver: a records callback and its mirror, fed Tune's hooks in Tune's order."""

    def __init__(self, url: str, mirror: OptunaMirror | None = None) -> None:
        self.mirror = mirror or OptunaMirror(RecordsCallback(run_uri="/unused", study="s"))
        self.records = self.mirror.records
        self.epochs: list[dict] = []
        with mirroring(url, STUDY):
            self.mirror.setup()

    def result(self, trial: FakeTrial, epoch: int, value: float) -> None:
        trial.last_result = {"epoch": epoch, "val_auc": value, "val_loss": 1 - value}
        self.epochs.append({"stage": CELL[0], "cell": CELL[1], "trial_id": trial.trial_id,
                            "epoch": epoch, "val_auc": value})  # fmt: skip
        self.mirror.on_trial_result(0, [], trial, dict(trial.last_result))

    def end(self, trial: FakeTrial, *, error: bool = False) -> None:
        if error:
            self.records.errors[trial.trial_id] = "RuntimeError: loss is nan"
            self.mirror.on_trial_error(0, [], trial)
        else:
            self.mirror.on_trial_complete(0, [], trial)
        trial.status = "ERROR" if error else "TERMINATED"

    def snapshot(self) -> None:
        self.mirror.get_state()
        self.mirror.on_snapshot_saved()

    def frames(self, trials: list[FakeTrial]) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows = [self.records.trial_row(t) for t in trials]
        return pd.DataFrame(rows), pd.DataFrame(self.epochs)


def live_trials(url: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=study_name(*CELL), storage=url)
    return {t.user_attrs["trial_id"]: t for t in study.trials}


def same_trial(live: optuna.trial.FrozenTrial, exported: optuna.trial.FrozenTrial) -> None:
    assert live.state == exported.state
    assert live.values == exported.values
    assert live.params == exported.params
    assert live.distributions == exported.distributions
    assert live.intermediate_values == exported.intermediate_values
    assert live.user_attrs == exported.user_attrs


def test_trials_are_running_as_they_report_and_finished_after_the_snapshot(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    s = Session(url)
    done, stopped, broken = FakeTrial("t1", 1e-3), FakeTrial("t2", 2e-3), FakeTrial("t3", 3e-3)
    s.result(done, 1, 0.6)
    s.result(stopped, 1, 0.5)
    first = live_trials(url)
    assert {t.state for t in first.values()} == {TrialState.RUNNING}
    assert first["t1"].intermediate_values == {1: 0.6} and first["t1"].params["lr"] == 1e-3
    for epoch, value in ((2, 0.7), (3, 0.8)):
        s.result(done, epoch, value)
    s.end(done)
    s.end(stopped)  # by ASHA after 1 of 3 epochs
    s.end(broken, error=True)  # before its first epoch
    # Ended, but no snapshot has them ended yet: a driver killed now would run them again.
    assert live_trials(url)["t1"].state == TrialState.RUNNING
    s.snapshot()
    live = live_trials(url)
    assert live["t1"].state == TrialState.COMPLETE and live["t1"].value == 0.8
    assert live["t1"].intermediate_values == {1: 0.6, 2: 0.7, 3: 0.8}
    assert live["t2"].state == TrialState.PRUNED and live["t2"].value == 0.5
    assert live["t3"].state == TrialState.FAIL and "loss is nan" in live["t3"].user_attrs["error"]
    # The end-of-run export of the same records agrees, trial by trial.
    trials, epochs = s.frames([done, stopped, broken])
    exported = cell_studies(trials, epochs, metric="val_auc",
                            distributions=study_distributions(STUDY))[CELL]  # fmt: skip
    by_id = {t.user_attrs["trial_id"]: t for t in exported.trials}
    assert set(by_id) == set(live)
    for tid, trial in live.items():
        same_trial(trial, by_id[tid])
    stored = optuna.load_study(study_name=study_name(*CELL), storage=url)
    assert stored.user_attrs == {"metric": "val_auc", "stage": CELL[0], "cell": CELL[1]}


def test_a_resumed_driver_updates_its_trials_and_never_duplicates_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    first = Session(url)
    ended, unsaved, running = FakeTrial("t1", 1e-3), FakeTrial("t2", 2e-3), FakeTrial("t3", 3e-3)
    for trial in (ended, unsaved, running):
        first.result(trial, 1, 0.5)
    first.end(ended)
    first.snapshot()
    first.result(unsaved, 2, 0.6)
    first.result(unsaved, 3, 0.65)
    first.end(unsaved)  # then the driver is killed after the snapshot, before it told us
    first.mirror.get_state()
    # The resumed driver: the callbacks come back from tuner.pkl (no connection in it).
    second = Session(url, pickle.loads(pickle.dumps(first.mirror)))
    restored = [ended, unsaved, running]
    second.mirror.on_step_begin(0, restored)
    live = live_trials(url)
    assert live["t2"].state == TrialState.COMPLETE and live["t2"].value == 0.65
    assert live["t1"].state == TrialState.PRUNED and live["t1"].value == 0.5  # 1 of 3 epochs
    # The running trial goes on from its checkpoint: epoch 1 again, then 2 and 3.
    for epoch, value in ((1, 0.55), (2, 0.7), (3, 0.9)):
        second.result(running, epoch, value)
    second.end(running)
    second.snapshot()
    second.mirror.on_experiment_end(restored)
    study = optuna.load_study(study_name=study_name(*CELL), storage=url)
    ids = [t.user_attrs["trial_id"] for t in study.trials]
    assert sorted(ids) == ["t1", "t2", "t3"], ids
    t3 = live_trials(url)["t3"]
    assert t3.state == TrialState.COMPLETE and t3.intermediate_values == {1: 0.55, 2: 0.7, 3: 0.9}


def test_a_broken_database_is_one_warning_and_the_search_goes_on(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'live.db'}"
    s = Session(url)
    trial = FakeTrial("t1", 1e-3)
    for epoch in (1, 2, 3):
        s.result(trial, epoch, 0.5)
    s.end(trial)
    s.snapshot()
    s.mirror.on_experiment_end([trial])
    err = capsys.readouterr().err
    assert err.count("could not be written") == 1, err
    assert "the search goes on" in err and "writes to the live Optuna storage failed" in err


def test_a_database_that_breaks_mid_run_stops_nothing(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    s = Session(url)
    trial = FakeTrial("t1", 1e-3)
    s.result(trial, 1, 0.5)
    s.mirror.live._storage.engine.dispose()
    (tmp_path / "live.db").write_bytes(b"not a database" * 100)
    s.result(trial, 2, 0.6)
    s.end(trial)
    s.snapshot()
    assert "could not be written" in capsys.readouterr().err


def test_non_search_cells_are_not_mirrored(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    live = LiveStudies(url, distributions={}, metric="val_auc", direction="maximize")
    live.write("final", "baseline_cnn", {"trial_id": "t1", "status": "completed"}, {})
    assert live._storage is None  # never even opened


def test_default_storage_is_a_sqlite_file_in_a_local_run_folder(tmp_path):
    assert live_url(None, str(tmp_path)) == f"sqlite:///{tmp_path}/optuna-live.db"
    assert live_url(None, "s3://bucket/runs/R") is None
    assert live_url("none", str(tmp_path)) is None
    assert live_url("postgresql://u@h/db", str(tmp_path)) == "postgresql://u@h/db"
    assert "not local" in optuna_live.live_note(None, "s3://bucket/runs/R")


@pytest.mark.parametrize(
    ("url", "pattern"),
    [
        ("live.db", "is not a database URL"),
        ("postgresql://u:secret@localhost/db", "carries a password"),
        ("nosuchdialect://host/db", "cannot be opened|not installed"),
        ("sqlite:////no/such/folder/live.db", "cannot be opened"),
    ],
)
def test_bad_storage_urls_are_refused_with_the_fix(url, pattern):
    with pytest.raises(CxrkdError, match=pattern) as info:
        check_url(url)
    assert "secret" not in str(info.value)


@pytest.fixture
def run_args(tiny_store, tiny, tmp_path) -> list[str]:
    """A valid tiny ``search run`` (the tests below add one bad option)."""
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    return ["search", "run", "pneumonia-kd", "--dataset", tiny_store.name, "--name", "R",
            "--storage", str(tmp_path / "runs"), *sets]  # fmt: skip


def test_a_bad_optuna_storage_fails_before_the_run_is_created(capsys, run_args, tmp_path):
    storage, bad = tmp_path / "runs", "sqlite:////no/such/dir/x.db"
    args = [*run_args, "--optuna-storage", bad]
    fails(capsys, args, r"--optuna-storage sqlite:////no/such/dir/x\.db cannot be opened")
    assert not (storage / "R").exists()
    assert not Path("/no/such/dir").exists()


def test_ray_dashboard_without_its_extra_names_the_extra(capsys, run_args, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "aiohttp" else real(name, *a))  # fmt: skip
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    storage = tmp_path / "runs"
    fails(capsys, [*run_args, "--ray-dashboard"], r"missing: aiohttp", r"ray\[default\]==")
    assert not (storage / "R").exists()


def test_ray_dashboard_is_refused_on_a_cluster(capsys, run_args, tmp_path):
    storage = tmp_path / "runs"
    args = [*run_args, "--ray-dashboard", "--address", "10.0.0.1:6379"]
    fails(capsys, args, r"attaches to 10\.0\.0\.1:6379", r"cluster's own dashboard")
    assert not (storage / "R").exists()


def test_ray_dashboard_starts_when_its_extra_is_installed():
    missing = [m for m in ray_runtime.DASHBOARD_MODULES if not _installed(m)]
    if missing:
        with pytest.raises(CxrkdError, match=r"ray\[default\]"):
            ray_runtime.check_dashboard(None)
    else:
        ray_runtime.check_dashboard(None)  # no error: the flag starts it


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_the_end_of_a_run_says_where_everything_is(tmp_path):
    run = str(tmp_path / "R")
    lines = "\n".join(optuna_live.where(run, f"sqlite:///{run}/optuna-live.db"))
    assert f"tables       {run}/tables" in lines
    assert f"dashboard    {run}/dashboard.html" in lines
    assert f"optuna-dashboard sqlite:///{run}/optuna.db" in lines
    assert f"optuna-dashboard sqlite:///{run}/optuna-live.db" in lines
    assert "optuna live" not in "\n".join(optuna_live.where(run, None))


def test_a_resume_takes_a_database_url_from_its_command_line_never_from_the_run_folder():
    from cxrkd.search.optuna_live import OFF, resumed_storage

    url = "postgresql://someone@db.example/cxrkd"
    assert resumed_storage(None, None) == (None, None)  # the run's own SQLite file
    assert resumed_storage(OFF, None) == (OFF, None)
    assert resumed_storage(url, url) == (url, None)  # named again: kept
    assert resumed_storage(None, "sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", None)
    live, note = resumed_storage(url, None)  # only run.json names it: not connected to
    assert live == OFF and "--optuna-storage" in note and "db.example" in note
