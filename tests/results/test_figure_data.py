"""The data behind each dashboard figure, against answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_run import synthetic_frames

from cxrkd.results import figure_data as F

STAGES = ["teacher", "search", "final"]


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()


def test_trial_counts_per_cell_in_study_order(frames):
    trials, _ = frames
    shuffled = trials.sample(frac=1, random_state=0)  # records come in file-name order
    counts = F.trial_counts(shuffled, stages=STAGES).set_index(["stage", "cell"])
    assert list(dict.fromkeys(counts.index.get_level_values(0))) == STAGES
    base = counts.loc[("search", "baseline_cnn")]
    statuses = ["trials", "completed", "stopped", "errored", "running"]
    assert base[statuses].tolist() == [4, 2, 1, 1, 0]
    assert counts.loc[("search", "resnet18_kd"), "running"] == 1
    assert counts.loc[("final", "resnet18_frozen"), "completed"] == 2
    assert counts["trials"].sum() == len(trials)


def test_stage_order_puts_unknown_stages_last(frames):
    trials, _ = frames
    assert F.stage_order(trials, ["final", "teacher"]) == ["final", "teacher", "search"]


def test_best_trial_prefers_trials_that_ran_every_epoch(frames):
    trials, _ = frames
    best = F.best_trials(trials, metric="val_auc", stages=STAGES).set_index(["stage", "cell"])
    # b2 reported 0.75 but was stopped at epoch 2; b4 (0.72) is the best that ran all 4.
    assert best.loc[("search", "baseline_cnn"), "trial_id"] == "b4"
    assert best.loc[("search", "baseline_cnn"), "value"] == pytest.approx(0.72)
    assert best.loc[("teacher", "resnet50_teacher"), "trial_id"] == "t2"
    # Searched parameters only, 3 significant digits; pinned values (img_size) are left out.
    assert best.loc[("search", "baseline_cnn"), "config"] == (
        "lr=0.0006, weight_decay=0.001, dropout=0.1"
    )
    worst = F.best_trials(trials, metric="val_auc", mode="min").set_index(["stage", "cell"])
    assert worst.loc[("search", "baseline_cnn"), "trial_id"] == "b1"


def test_best_trial_falls_back_to_stopped_trials_and_skips_cells_without_values(frames):
    trials, _ = frames
    only_stopped = trials[trials["trial_id"].isin(["b2", "b3"])]
    best = F.best_trials(only_stopped, metric="val_auc")
    assert best["trial_id"].tolist() == ["b2"]
    assert F.best_trials(trials[trials["trial_id"] == "b3"], metric="val_auc").empty
    named = F.best_trials(trials, metric="val_auc", params={("search", "baseline_cnn"): ["lr"]})
    assert named.set_index(["stage", "cell"]).loc[("search", "baseline_cnn"), "config"] == (
        "lr=0.0006"
    )


def test_cell_roles(frames):
    trials, _ = frames
    roles = F.cell_roles(trials, teacher_stages=["teacher"]).to_dict()
    assert roles == {
        "resnet50_teacher": "teacher",
        "baseline_cnn": "baseline",
        "resnet18_kd": "student",
        "resnet18_frozen": "baseline",
    }


@pytest.mark.parametrize(
    ("values", "costs", "front"),
    [
        ([0.9, 0.8, 0.7], [10, 5, 1], [True, True, True]),  # a trade-off at every point
        ([0.9, 0.8, 0.7], [1, 5, 10], [True, False, False]),  # the first dominates
        ([0.8, 0.8], [5, 5], [True, True]),  # equal points do not dominate each other
        ([0.8, 0.8], [5, 6], [True, False]),  # same value, higher cost
        ([0.8, np.nan, 0.9], [5, 1, np.nan], [True, False, False]),  # NaN is never on it
    ],
)
def test_pareto_mask(values, costs, front):
    assert F.pareto_mask(values, costs).tolist() == front


def test_pareto_points_over_seeds(frames):
    trials, _ = frames
    points = F.pareto_points(trials).set_index("cell")
    assert points.loc["resnet50_teacher", "value"] == pytest.approx(0.91)
    assert points.loc["resnet50_teacher", "std"] == pytest.approx(np.std([0.90, 0.92], ddof=1))
    assert points.loc["resnet50_teacher", "latency_ms"] == 11.0  # median over seeds
    assert points.loc["resnet18_kd", "role"] == "student"
    # frozen (0.61 at 5 ms, 11.2M) is dominated by the KD student (0.87 at 4 ms, 11.2M).
    assert points["front_latency_ms"].to_dict() == {
        "resnet50_teacher": True,
        "baseline_cnn": True,
        "resnet18_kd": True,
        "resnet18_frozen": False,
    }
    assert not points.loc["resnet18_frozen", "front_params"]
    assert points.loc["baseline_cnn", "front_params"]


def test_pareto_points_of_a_run_without_final_models_is_empty(frames):
    trials, _ = frames
    assert F.pareto_points(trials[trials["stage"] != "final"]).empty


def test_resolution_curves_group_by_model_approach_and_resolution():
    trials, _ = synthetic_frames(lowres=True)
    curves = F.resolution_curves(trials)
    mcct = curves[curves["metric"] == "test_auroc_mcct"].set_index(["approach", "resolution"])
    # The full-resolution teacher (low_res 0) sits at img_size (32 px), without KD.
    assert mcct.loc[(F.NO_KD, 32), "mean"] == pytest.approx(0.91)
    assert mcct.loc[(F.NO_KD, 16), "mean"] == pytest.approx(0.72)
    assert mcct.loc[("mlcak", 16), "mean"] == pytest.approx(0.87)
    assert mcct.loc[("mlcak", 32), "n_seeds"] == 2
    mlct = curves[curves["metric"] == "test_auroc_mlct"].set_index(["approach", "resolution"])
    assert mlct.loc[("mlcak", 32), "mean"] == pytest.approx(0.76)
    assert set(curves["task"]) == {"T1 (MLCT)", "T2 (MCCT)"}
    assert len(curves) == 2 * 4  # 2 metrics x 4 (approach, resolution) points


def test_resolution_curves_say_what_is_missing(frames):
    trials, _ = frames
    assert F.resolution_curves(trials).empty
    missing = F.missing_columns(F.final_rows(trials), F.RESOLUTION_COLUMNS)
    assert missing == list(F.RESOLUTION_COLUMNS)


def test_learning_curves_mark_the_last_epoch_and_status(frames):
    trials, epochs = frames
    curves = F.learning_curves(epochs, trials, metric="val_auc", stage="search")
    b2 = curves[curves["trial_id"] == "b2"]
    assert b2["epoch"].tolist() == [1, 2] and b2["last"].tolist() == [False, True]
    assert set(b2["status"]) == {"stopped"}
    assert set(curves.loc[curves["trial_id"] == "k2", "status"]) == {"running"}
    # An epoch reported by a trial the trials frame does not know yet: still running.
    extra = epochs.iloc[[0]].assign(stage="search", trial_id="new", cell="baseline_cnn")
    curves = F.learning_curves(pd.concat([epochs, extra]), trials, metric="val_auc", stage="search")
    assert curves.loc[curves["trial_id"] == "new", "status"].tolist() == ["running"]
    assert F.learning_curves(epochs, trials, metric="val_loss", stage="search").empty


def test_confusion_counts_sum_over_seeds(frames):
    trials, _ = frames
    counts = F.confusion_counts(trials).set_index(["cell", "actual", "predicted"])
    teacher = counts.loc["resnet50_teacher"]
    assert teacher.loc[("negative", "negative"), "count"] == 82
    assert teacher.loc[("negative", "positive"), "count"] == 18
    assert teacher.loc[("positive", "negative"), "count"] == 11
    assert teacher.loc[("positive", "positive"), "count"] == 89
    assert set(counts["n_seeds"]) == {2}


def test_operating_points_from_confusion_counts(frames):
    trials, _ = frames
    points = F.operating_points(trials).set_index("trial_id")
    assert points.loc["f-resnet50_teacher-0", "fpr"] == pytest.approx(10 / 50)
    assert points.loc["f-resnet50_teacher-0", "tpr"] == pytest.approx(45 / 50)


def test_trial_order_uses_tunes_index_in_the_experiment_tag():
    frame = pd.DataFrame({"experiment_tag": ["10_a", "2_b", None, "1_c"]})
    assert F.trial_order(frame).tolist() == [10, 2, 2, 1]
    assert F.trial_order(pd.DataFrame({"x": [5, 6]})).tolist() == [0, 1]


def test_searched_rows_leave_out_the_tested_final_models(frames):
    trials, _ = frames
    assert set(F.searched_rows(trials)["stage"]) == {"teacher", "search"}
    assert len(F.searched_rows(trials.drop(columns="config/evaluate_test"))) == len(trials)
