"""The driver keeps a trial's last result, not Tune's running statistics of every value it
reported (search.lean_trials): a real Tune Trial, fed the results a cxrkd trial reports."""

from __future__ import annotations

import json

from ray.tune.experiment import Trial

from cxrkd.search.lean_trials import LeanTrials

# The shape of a cxrkd epoch result: ~30 numbers (metrics, costs), and the config (which Tune
# does not track).
CONFIG = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 8, "seed": 0, "epochs": 4}


def result(epoch: int) -> dict:
    metrics = {f"val_metric_{i}": 0.5 + epoch / 100 + i / 1000 for i in range(24)}
    return {"epoch": epoch, "training_iteration": epoch, "val_auc": 0.6 + epoch / 100,
            "train_loss": 1 / epoch, **metrics, "config": CONFIG}  # fmt: skip


def run(trial: Trial, callback: LeanTrials | None, epochs: int = 12, ended: str = "complete"):
    if callback:
        callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epoch in range(1, epochs + 1):
        trial.update_last_result(result(epoch))
    if callback:
        getattr(callback, f"on_trial_{ended}")(iteration=0, trials=[trial], trial=trial)
    return trial


def snapshot_size(trial: Trial) -> int:
    return sum(len(part) for part in trial.get_json_state())


def test_an_ended_trial_keeps_its_last_result_and_no_statistics():
    kept = run(Trial("probe", config=dict(CONFIG), stub=True), None)
    lean = run(Trial("probe", config=dict(CONFIG), stub=True), LeanTrials())
    errored = run(Trial("probe", config=dict(CONFIG), stub=True), LeanTrials(), ended="error")
    # What Tune keeps by default (what the callback removes): statistics and windows per value.
    assert {"val_auc", "val_metric_23", "train_loss"} <= set(kept.metric_analysis)
    assert len(kept.metric_n_steps["val_auc"]["10"]) == 10
    for trial in (lean, errored):
        assert trial.metric_analysis == {} and trial.metric_n_steps == {}
        assert trial.last_result["val_auc"] == kept.last_result["val_auc"]
        assert trial.last_result["epoch"] == 12
    # ... and from what a snapshot writes of it.
    meta = json.loads(lean.get_json_state()[1])
    assert meta["metric_analysis"] == {} and meta["last_result"]["epoch"] == 12
    assert snapshot_size(lean) * 3 < snapshot_size(kept), (snapshot_size(lean), snapshot_size(kept))


def test_a_running_trial_keeps_its_statistics_but_no_windows():
    trial = Trial("probe", config=dict(CONFIG), stub=True)
    LeanTrials().on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epoch in range(1, 4):
        trial.update_last_result(result(epoch))
    assert trial.metric_analysis["val_auc"]["max"] == result(3)["val_auc"]
    assert trial.metric_n_steps["val_auc"] == {}
    assert "last-5-avg" not in trial.metric_analysis["val_auc"]
