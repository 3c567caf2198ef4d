"""The study driver end to end: real Ray Tune + Optuna on a three-node cluster on this machine.

Fast unit tests pin down what the end-to-end run cannot show reliably at this size: each cell
is early-stopped only against its own trials (CellScheduler) and each cell gets its own Optuna
study and budget (CellSearcher), across a searcher save/restore too.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from ray import cloudpickle
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from cxrkd.search.cells import CellScheduler, CellSearcher, SchedulerState
from cxrkd.search.run_state import RunOptions
from cxrkd.search.runner import run_study
from cxrkd.search.stage import stage_epochs
from cxrkd.spaces.studies import FixedCell, SearchCell
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

METRIC = "val_auc"
BASE = {"img_size": 16, "epochs": 4, "pretrained": False}


STAGE = "search"


def _trial(trial_id: str, cell: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={CELL_KEY: cell, STAGE_KEY: STAGE})


def _scheduler(cells, *, early_stopping: bool = True, epochs: int = 4) -> CellScheduler:
    scheduler = CellScheduler(metric=METRIC, mode="max", grace_period=1, reduction_factor=2)
    for cell in cells:
        if isinstance(cell, str):
            cell = SearchCell(cell, "cnn_baseline", {}, 4)
        scheduler.add_cell(STAGE, cell, early_stopping=early_stopping, default_epochs=epochs)
    return scheduler


def _report(scheduler: CellScheduler, trial, value: float, it: int = 1) -> str:
    return scheduler.on_trial_result(None, trial, {"training_iteration": it, METRIC: value})


def test_each_cell_is_early_stopped_within_its_own_number_of_epochs():
    # A teacher cell trained longer than the students beside it (lowres-kd's demo).
    cells = [SearchCell("teacher", "vit_mtl", {"epochs": 8}, 2), SearchCell("s", "kd_vit", {}, 2)]
    assert stage_epochs(cells, default=4) == 8
    assert stage_epochs([FixedCell("f", ({"epochs": 3}, {"epochs": 6}))], default=4) == 6
    scheduler = _scheduler(cells, epochs=4)
    assert (scheduler.asha["search/teacher"]._max_t, scheduler.asha["search/s"]._max_t) == (8, 4)


def test_cell_scheduler_stops_a_trial_only_against_its_own_cell():
    scheduler = _scheduler(["a", "b"])
    a1, a2, b1, b2 = _trial("a1", "a"), _trial("a2", "a"), _trial("b1", "b"), _trial("b2", "b")
    for trial in (a1, a2, b1, b2):
        scheduler.on_trial_add(None, trial)
    asha_a, asha_b = scheduler.asha["search/a"], scheduler.asha["search/b"]
    assert set(scheduler.asha) == {"search/a", "search/b"} and asha_a is not asha_b
    # Cell a's rung fills with strong trials.
    assert _report(scheduler, a1, 0.95) == TrialScheduler.CONTINUE
    assert _report(scheduler, a2, 0.90) == TrialScheduler.STOP  # below a's median (0.95)
    # Cell b's first trial is far below cell a's rung: one shared ASHA would stop it.
    assert _report(scheduler, b1, 0.30) == TrialScheduler.CONTINUE
    assert _report(scheduler, b2, 0.20) == TrialScheduler.STOP  # below b's own rung (0.30)
    assert asha_a._num_stopped == 1 and asha_b._num_stopped == 1
    # A finished trial leaves its own cell's bookkeeping only.
    scheduler.on_trial_complete(None, b1, {"training_iteration": 4, METRIC: 0.5})
    assert "b1" not in asha_b._trial_info and "a1" in asha_a._trial_info
    # A study that cannot go on stops every running trial at its next result.
    scheduler.halt()
    assert _report(scheduler, a1, 0.99, it=2) == TrialScheduler.STOP


def test_asha_rungs_survive_a_driver_restart():
    scheduler = _scheduler(["a"])
    a1, a2 = _trial("a1", "a"), _trial("a2", "a")
    for trial in (a1, a2):
        scheduler.on_trial_add(None, trial)
    assert _report(scheduler, a1, 0.95) == TrialScheduler.CONTINUE
    state = SchedulerState(scheduler).get_state()
    # The restored experiment's scheduler comes from tuner.pkl, pickled before any result and
    # perhaps before the cell was opened: the driver adds it again after the restore.
    for opened_before in (True, False):
        restored = _scheduler(["a"] if opened_before else [])
        SchedulerState(restored).set_state(pickle.loads(pickle.dumps(state)))
        if not opened_before:
            restored.add_cell(STAGE, SearchCell("a", "cnn_baseline", {}, 4),
                              early_stopping=True, default_epochs=4)  # fmt: skip
        restored.on_trial_add(None, a2)  # Tune re-adds the unfinished trials after that
        assert _report(restored, a2, 0.90) == TrialScheduler.STOP  # a1's 0.95 is in the rung
    fresh = _scheduler(["a"])
    fresh.on_trial_add(None, a2)
    assert _report(fresh, a2, 0.90) == TrialScheduler.CONTINUE  # what a restart used to do
    assert SchedulerState(_scheduler(["a"], early_stopping=False)).get_state() is None


def test_cell_scheduler_without_early_stopping_never_stops():
    scheduler = _scheduler(["a"], early_stopping=False)
    trials = [_trial(f"t{i}", "a") for i in range(3)]
    for i, trial in enumerate(trials):
        scheduler.on_trial_add(None, trial)
        assert _report(scheduler, trial, 0.9 - 0.3 * i) == TrialScheduler.CONTINUE


def _cells() -> list:
    cnn = {**BASE, "method": "cnn_baseline", "model": "cnn_baseline"}
    tl = {**BASE, "method": "transfer", "model": "resnet18", "freeze": True, "lr": 1e-3}
    return [
        SearchCell("cnn", "cnn_baseline", cnn, 3, {"lr": (1e-3, 2e-3)}),
        SearchCell("tl", "transfer", tl, 1),
        FixedCell("fixed", ({**cnn, "lr": 1e-3, "seed": 0}, {**cnn, "lr": 1e-3, "seed": 1})),
    ]


def _searcher(cells: list, *, seed: int = 0) -> CellSearcher:
    searcher = CellSearcher(metric=METRIC, mode="max", seed=seed)
    for i, cell in enumerate(cells):
        searcher.add_cell(STAGE, cell, order=(0, i))
    return searcher


def _take(searcher: CellSearcher, start: int, n: int) -> list[tuple[str, dict]]:
    """Up to ``n`` suggestions, fewer when the searcher has none to give now."""
    out = []
    for i in range(start, start + n):
        config = searcher.suggest(f"t{i}")
        if config in (Searcher.FINISHED, None):
            break
        out.append((f"t{i}", config))
    return out


def test_cell_searcher_gives_each_cell_its_own_study_and_budget(tmp_path):
    searcher = _searcher(_cells())
    assert set(searcher.optuna) == {"search/cnn", "search/tl"}  # a fixed cell: no Optuna study
    studies = {k.split("/")[1]: s._ot_study for k, s in searcher.optuna.items()}
    assert studies["cnn"] is not studies["tl"]
    first = _take(searcher, 0, 3)
    # Round robin over cells with budget left: every cell starts before any gets a second.
    assert [c[CELL_KEY] for _, c in first] == ["cnn", "tl", "fixed"]
    assert {c[STAGE_KEY] for _, c in first} == {STAGE}
    # A result reaches its own cell's study only.
    tid, config = first[0]
    assert config["method"] == "cnn_baseline" and config["epochs"] == 4  # fixed values kept
    assert 1e-3 <= config["lr"] <= 2e-3 and "dropout" in config  # searched, in the cell's bounds
    searcher.on_trial_complete(tid, result={METRIC: 0.8, "training_iteration": 4})
    assert [t.value for t in studies["cnn"].trials if t.value is not None] == [0.8]
    assert all(t.value is None for t in studies["tl"].trials)
    # Tune saves the searcher with the experiment; a restored one keeps what it issued, for
    # cells added before the restore and after it alike.
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher(_cells()[:1])
    restored.restore(str(tmp_path / "searcher.pkl"))
    for i, cell in enumerate(_cells()[1:], start=1):
        restored.add_cell(STAGE, cell, order=(0, i))
    rest = _take(restored, 3, 20)
    assert restored.suggest("t98") is None  # every open cell has had its budget: none now
    restored.finish()  # the driver: every stage has ended
    assert restored.suggest("t99") == Searcher.FINISHED
    counts = pd.Series([c[CELL_KEY] for _, c in first + rest]).value_counts().to_dict()
    assert counts == {"cnn": 3, "tl": 1, "fixed": 2}
    assert sorted(c["seed"] for _, c in first + rest if c[CELL_KEY] == "fixed") == [0, 1]
    # The restored cnn study still holds the result told before the save.
    assert [t.value for t in restored.optuna["search/cnn"]._ot_study.trials if t.value] == [0.8]


def test_earlier_stages_first_and_one_trial_computes_a_teachers_outputs():
    cnn = {**BASE, "method": "cnn_baseline", "model": "cnn_baseline"}
    searcher = CellSearcher(metric=METRIC, mode="max", seed=0)
    searcher.add_cell("search", SearchCell("late", "cnn_baseline", cnn, 3), order=(1, 0))
    searcher.add_cell("teacher", SearchCell("t", "cnn_baseline", cnn, 1), order=(0, 0))
    assert searcher.suggest("t0")[CELL_KEY] == "t"  # a teacher is on its students' path
    # Two cells with one teacher: the first trial runs alone until it has reported.
    for key in ("kd_a", "kd_b"):
        searcher.add_cell("search", SearchCell(key, "cnn_baseline", cnn, 2), order=(1, 1),
                          gate="teachers/T")  # fmt: skip
    taken = _take(searcher, 1, 10)
    gated = [tid for tid, c in taken if c[CELL_KEY].startswith("kd_")]
    assert len(gated) == 1 and [c[CELL_KEY] for _, c in taken].count("late") == 3
    assert dict(taken)[gated[0]][CELL_KEY] == "kd_a"
    searcher.on_trial_result(gated[0], {METRIC: 0.5, "training_iteration": 1})
    rest = sorted(c[CELL_KEY] for _, c in _take(searcher, 20, 10))
    assert rest == ["kd_a", "kd_b", "kd_b"]


def test_a_completed_trials_training_state_goes_with_the_next_snapshot(tmp_path):
    """Not when its cell ends: a cell of ViT-Base trials held ~1 GB per kept checkpoint each."""
    from cxrkd.search.study_run import EXPERIMENT, StudyDriver

    def trial(name: str, status: str) -> SimpleNamespace:
        folder = tmp_path / "run" / EXPERIMENT / name
        for ckpt in ("checkpoint_000000", "checkpoint_000001"):
            (folder / ckpt).mkdir(parents=True)
            for file in ("state.pt", "model.pt", "config.json"):
                (folder / ckpt / file).write_bytes(b"x")
        return SimpleNamespace(status=status, storage=SimpleNamespace(trial_dir_name=name))

    driver = StudyDriver(
        CellSearcher(metric=METRIC, mode="max", seed=0),
        CellScheduler(metric=METRIC, mode="max", grace_period=1, reduction_factor=2),
    )
    driver.ctx = SimpleNamespace(run_uri=str(tmp_path / "run"))
    done, stopping = trial("done", "RUNNING"), trial("stopping", "RUNNING")
    for t in (done, stopping):
        driver.on_trial_complete(0, [], t)
    done.status = "TERMINATED"  # the snapshot being saved has it ended; the other not yet
    assert driver.uncommitted()
    driver.get_state()
    driver.on_snapshot_saved()
    left = {p.relative_to(tmp_path / "run" / EXPERIMENT).as_posix()
            for p in (tmp_path / "run").rglob("*.pt")}  # fmt: skip
    assert left == {
        *(f"done/checkpoint_00000{i}/model.pt" for i in (0, 1)),
        *(f"stopping/checkpoint_00000{i}/{f}" for i in (0, 1) for f in ("state.pt", "model.pt")),
    }
    assert driver.uncommitted()  # the other goes with a later snapshot
    stopping.status = "TERMINATED"
    driver.get_state()
    driver.on_snapshot_saved()
    assert not list((tmp_path / "run").rglob("state.pt")) and not driver.uncommitted()


# ---- end to end on three Ray nodes -------------------------------------------------------

CONTRACT = ["study", "stage", "cell", "method", "trial_id", "status"]
KD_CELL = "resnet18_kd"


@pytest.mark.slow
def test_pneumonia_kd_runs_across_nodes_and_writes_the_contract(
    ray_cluster, tiny_store, tiny, home, tmp_path
):
    storage = tmp_path / "runs"
    run_uri = run_study(
        RunOptions(
            study="pneumonia-kd",
            dataset=tiny_store.name,
            name="e2e",
            storage=str(storage),
            address=ray_cluster.address,
            num_samples=2,
            max_concurrent=3,
            overrides=tiny,
        )
    )
    run = Path(run_uri)
    assert run == storage / "e2e"
    # Tune restores the study from tuner.pkl: the callback that carries the ASHA rungs must hold
    # the very scheduler the restored experiment runs with.
    with open(run / "study" / "tuner.pkl", "rb") as f:
        tuner = cloudpickle.load(f)
    (carrier,) = [c for c in tuner["_run_config"].callbacks if isinstance(c, SchedulerState)]
    assert carrier.scheduler is tuner["_tune_config"].scheduler
    trials = pd.read_parquet(run / "trials.parquet")
    epochs = pd.read_parquet(run / "epochs.parquet")

    # Contract columns, one row per trial, every trial finished.
    for column in [*CONTRACT, "error", "config/lr", "config/batch_size", "val_auc"]:
        assert column in trials, column
    assert not trials["trial_id"].duplicated().any()
    assert set(trials["status"]) <= {"completed", "stopped"}, trials[["cell", "error"]]
    assert (trials["study"] == "pneumonia-kd").all()
    sizes = trials.groupby(["stage", "cell"]).size().to_dict()
    assert sizes == {
        ("teacher", "resnet50_teacher"): 2,  # min(teacher_samples=2, num_samples=2)
        **{("search", c): 2 for c in ["baseline_cnn", "resnet18_finetuned", "resnet18_frozen"]},
        ("search", KD_CELL): 2,
        **{("final", c): 2 for c in ["baseline_cnn", "resnet18_finetuned", "resnet18_frozen"]},
        ("final", KD_CELL): 2,
        ("final", "resnet50_teacher"): 2,  # the demo profile's 2 seeds
    }
    # --set values reached every trial; --num-samples set the budget (checked above).
    assert (trials["config/img_size"] == 16).all() and (trials["config/epochs"] == 2).all()
    assert (trials["config/batch_size"] == 8).all()

    # Only the final stage touches the test split and measures the deployed model.
    final = trials[trials["stage"] == "final"]
    for column in ["test_auc", "test_acc_at_val_thr", "params", "latency_ms"]:
        assert final[column].notna().all(), column
    assert trials.loc[trials["stage"] != "final", "test_auc"].isna().all()
    assert (final["status"] == "completed").all()  # no early stopping in the final stage
    assert sorted(final.groupby("cell")["config/seed"].apply(sorted).iloc[0]) == [0, 1]

    # epochs.parquet: one row per (trial, epoch), epochs 1..n without gaps, matching trials.
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert {"val_auc", "epoch_s", "node_id"} <= set(epochs.columns)
    for trial_id, rows in epochs.groupby("trial_id"):
        assert sorted(rows["epoch"]) == list(range(1, len(rows) + 1)), trial_id
    last = epochs.groupby("trial_id")["epoch"].max()
    assert last.to_dict() == trials.set_index("trial_id")["epoch"].to_dict()
    stopped = trials[trials["status"] == "stopped"]
    assert (stopped["stage"] != "final").all() and (stopped["epoch"] >= 1).all()

    # No stage barrier: the baselines (no teacher) started while the teacher still trained,
    # and the actors were shared by the stages (fewer worker processes than trials).
    first = epochs.groupby("stage")["recorded_at"].min()
    last = epochs.groupby("stage")["recorded_at"].max()
    assert first["search"] < last["teacher"], (first.to_dict(), last.to_dict())
    assert epochs["pid"].nunique() < len(trials)

    # The trials of a stage really ran on more than one Ray node. Not "on all three": with
    # actors reused across the study, Tune starts a new actor for a pending trial, then hands
    # that trial an actor freed meanwhile and stops the new one; with trials this short
    # (seconds, against ~8 s to start a trial process on 2 busy cores) the third node's slot
    # can stay in that loop for the whole run. Seen in 3 of 5 runs.
    nodes = epochs.groupby("stage")["node_id"].nunique().to_dict()
    assert nodes["search"] >= 2 and nodes["final"] >= 2, nodes

    # The chosen configuration of each search cell is what the final stage re-trained.
    searched = trials[(trials["stage"] == "search") & (trials["epoch"] == 2)]
    config_cols = [c for c in trials.columns if c.startswith("config/")]
    for cell, rows in final.groupby("cell"):
        if cell == "resnet50_teacher":
            continue
        best = searched[searched["cell"] == cell]
        best = best[best["val_auc"] == best["val_auc"].max()]
        same = [
            c
            for c in config_cols
            if c not in ("config/seed", "config/evaluate_test") and rows[c].notna().any()
        ]
        mine = rows.iloc[0][same]
        assert any(all(_same(mine[c], b[c]) for c in same) for _, b in best.iterrows()), (
            f"{cell}: final config is not the best searched one"
        )

    # One teacher, registered once on the run storage, used by every KD trial.
    teachers = sorted((storage / "teachers").iterdir())
    assert len(teachers) == 1 and (teachers[0] / "record.json").is_file()
    state = json.loads((run / "state.json").read_text())
    assert state["teacher_uri"] == str(teachers[0])
    assert state["done"] == ["teacher", "search", "final"]
    kd = trials[trials["method"] == "kd_logit"]
    assert len(kd) == 4 and (kd["config/teacher_path"] == str(teachers[0])).all()
    assert list((teachers[0] / "outputs").glob("train-16px*")), "cached teacher outputs"

    # Nothing a trial is handed names a path outside the run storage (the dataset comes
    # through the object store; the teacher from the storage).
    for column in config_cols:
        for value in trials[column].dropna():
            if isinstance(value, str) and "/" in value:
                assert value.startswith(str(storage)), (column, value)
    assert str(home) not in trials.to_json(), "a trial config names the driver's CXRKD_HOME"

    # Records and tables.
    # One trials object per (stage, cell), compacted at the end of its stage.
    assert sorted(
        str(p.parent.relative_to(run / "records")) for p in (run / "records").rglob("*.parquet")
    ) == sorted(f"{kind}/{s}--{c}" for s, c in sizes for kind in ("epochs", "trials"))
    for ext in ("md", "csv", "tex", "html"):
        assert (run / "tables" / f"pneumonia_kd.{ext}").is_file(), ext
    md = (run / "tables" / "pneumonia_kd.md").read_text()
    assert "SYNTHETIC" in md and "ResNet-18 KD student" in md


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b) or (math.isnan(a) and math.isnan(b))
    return a == b
