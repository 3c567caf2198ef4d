"""Watching a run, all in one real run (issue 12, items 2, 4 and 5): a study file written as
YAML by `cxrkd study show` and edited (its fine-tuned student a ResNet-34, which the table's
row then names), run by the real CLI in a subprocess with ``--ray-dashboard``, the
default live Optuna storage and ``--log-to tensorboard --log-to mlflow --log-to wandb``
against a real `mlflow server` on loopback and W&B offline. While the driver runs, the test
reads the Ray dashboard (127.0.0.1 only, token required) and the live Optuna storage (a
finished trial before the run ends); afterwards the live storage equals the end-of-run export,
and every tracker holds every trial with the values of the run's own records.

One run for all of them: each costs a driver, a Ray and trial processes (tens of seconds on
2 cores); the unit tests of each part are in test_trackers.py, test_optuna_live.py,
test_ray_dashboard.py and test_study_yaml_cli.py."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from test_optuna_live import same_trial
from test_ray_dashboard import URL, _listening
from test_resume import Driver
from test_trackers import (  # noqa: F401  (mlflow_server, wandb_offline: fixtures)
    METRICS,
    TEST_METRICS,
    _tensorboard,
    _wait_up,
    _wandb_run,
    mlflow_server,
    wandb_offline,
)

from cxrkd.results.optuna_export import study_name
from cxrkd.search.cli import main


def _dashboard(url: str, token: str) -> dict:
    """``/api/version`` of the dashboard: refused without the token, answered with it."""
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(url, timeout=10)
    auth = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(auth, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def _finished_live_trials(url: str, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except Exception:  # not created yet
        return 0
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


@pytest.mark.slow
def test_a_yaml_study_watched_live_on_the_dashboard_optuna_and_three_trackers(
    mlflow_server,  # noqa: F811
    wandb_offline,  # noqa: F811  (its variables set before the driver's environment is made)
    tiny_store,
    tiny,
    tmp_path,
    home,
    capsys,
):
    import mlflow
    import ray

    assert main(["study", "show", "pneumonia-kd", "--profile", "demo", "--format", "yaml"]) == 0
    text = capsys.readouterr().out
    # The fine-tuned student of the file trains a ResNet-34: its table row must say so.
    i = text.index("key: resnet18_finetuned")
    j = text.index("model: resnet18\n", i)
    study = tmp_path / "mine.yaml"
    study.write_text(text[:j] + "model: resnet34\n" + text[j + len("model: resnet18\n") :])
    _wait_up(mlflow_server)

    token = secrets.token_hex(32)  # Ray's token auth (on by default): this run's own token
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    ray_tmp = Path(tempfile.mkdtemp(prefix="cxrkd-rt-", dir="/tmp"))  # short socket paths
    env.update(CXRKD_HOME=str(home), RAY_TMPDIR=str(ray_tmp), CXRKD_TRIAL_THREADS="1",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RAY_AUTH_TOKEN=token,
               RAY_AUTH_MODE="token")  # fmt: skip
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    storage = tmp_path / "runs"
    run = storage / "R"
    driver = Driver(["search", "run", str(study), "--dataset", tiny_store.name, "--name", "R",
                     "--storage", str(storage), "--only", "resnet18_finetuned",
                     "--num-samples", "2", "--max-concurrent", "2", "--ray-dashboard",
                     "--log-to", "tensorboard", "--log-to", "mlflow", "--log-to", "wandb",
                     "--mlflow-uri",
                     mlflow_server.url, *sets],
                    env=env, log=tmp_path / "driver.log")  # fmt: skip
    live = f"sqlite:///{run / 'optuna-live.db'}"
    name = study_name("search", "resnet18_finetuned")
    version = port = seen = None
    try:
        deadline = time.monotonic() + 400
        while (version is None or seen is None) and driver.proc.poll() is None:
            assert time.monotonic() < deadline, driver.text()[-3000:]
            time.sleep(0.2)
            found = URL.search(driver.text())
            if version is None and found:
                port = int(found.group(2))
                version = _dashboard(f"http://127.0.0.1:{port}/api/version", token)
                assert _listening(port) == {"127.0.0.1"}  # never 0.0.0.0 unless asked
            if seen is None and _finished_live_trials(live, name):
                seen = driver.proc.poll() is None  # read while the driver still ran
        assert driver.wait(400) == 0, driver.text()[-3000:]
        driver.wait_gone()
    finally:
        driver.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    text = driver.text()
    assert version and version["ray_version"] == ray.__version__, text[-3000:]
    assert seen, f"no finished trial in the live storage mid-run:\n{text[-3000:]}"
    assert not _listening(port), "the dashboard outlived its run"
    assert "ray get-auth-token" in text
    assert "cxrkd: warning" not in text, text  # every tracker worked
    assert f"optuna live  {live}" in text and f"optuna-dashboard sqlite:///{run}/optuna.db" in text
    assert f"mlflow       {mlflow_server.url}  (experiment R)" in text
    assert (run / "study.yaml").read_text() == study.read_text()  # the copy resume reads
    raw = (run / "run.json").read_text()
    options = json.loads(raw)["options"]
    assert options["study"] == "pneumonia-kd" and options["study_file"] == str(run / "study.yaml")
    assert options["log_to"] == ["tensorboard", "mlflow", "wandb"]
    md = (run / "tables" / "pneumonia_kd.md").read_text()
    assert "ResNet-34 fine-tuned" in md and "ResNet-18 fine-tuned" not in md
    assert mlflow_server.url not in raw  # a URL never goes to the run folder

    # The live Optuna storage: the same trials as the end-of-run export, search cells only.
    mirror = optuna.load_study(study_name=name, storage=live)
    mirrored = {t.user_attrs["trial_id"]: t for t in mirror.trials}
    export = optuna.load_study(study_name=name, storage=f"sqlite:///{run / 'optuna.db'}")
    exported = {t.user_attrs["trial_id"]: t for t in export.trials}
    assert len(mirrored) == 2 and set(mirrored) == set(exported)
    for tid, trial in mirrored.items():
        assert trial.state.is_finished()
        same_trial(trial, exported[tid])
    assert optuna.get_all_study_names(live) == [name]

    # Every trial in each tracker, with the run's own numbers.
    epochs = pd.read_parquet(run / "epochs.parquet")
    trials = pd.read_parquet(run / "trials.parquet").set_index("trial_id")
    assert trials.groupby("stage").size().to_dict() == {"search": 2, "final": 2}
    final = trials[trials["stage"] == "final"]
    assert final["test_auc"].notna().all()
    client = mlflow.MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("R")
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(trials.index)
    wandb_files = {p.name[len("run-") : -len(".wandb")]: p
                   for p in wandb_offline.rglob("offline-run-*/run-*.wandb")}  # fmt: skip
    assert set(wandb_files) == set(trials.index)
    for tid, trial in trials.iterrows():
        label = f"{trial['stage']}/{trial['cell']}/{tid}"
        mine = epochs[epochs["trial_id"] == tid].set_index("epoch")
        assert len(mine) == int(tiny["epochs"])
        lr = trial["config/lr"]
        scalars, hparams = _tensorboard(run / "study" / "tensorboard" / label)
        assert hparams["stage"] == trial["stage"] and hparams["cell"] == trial["cell"]
        assert hparams["lr"] == pytest.approx(lr)
        ml = runs[tid]
        assert ml.info.run_name == label and ml.info.status == "FINISHED"
        assert ml.data.params["cell"] == trial["cell"] and float(ml.data.params["lr"]) == lr
        wb_run, wb_config, history = _wandb_run(wandb_files[tid])
        assert wb_run.display_name == label and wb_run.run_group == "R"
        assert wb_config["cell"] == trial["cell"] and wb_config["lr"] == pytest.approx(lr)
        for metric in METRICS:
            for epoch, value in mine[metric].items():
                assert scalars[(f"ray/tune/{metric}", epoch)] == pytest.approx(value, rel=1e-6)
                assert history[(metric, epoch)] == pytest.approx(value, rel=1e-12)
            logged = {m.step: m.value for m in client.get_metric_history(ml.info.run_id, metric)}
            assert logged == pytest.approx(mine[metric].to_dict(), rel=1e-12)
        last = int(mine.index.max())
        for metric in TEST_METRICS:
            if trial["stage"] != "final":
                assert metric not in ml.data.metrics
                continue
            value = trial[metric]
            assert ml.data.metrics[metric] == pytest.approx(value, rel=1e-12)
            assert scalars[(f"ray/tune/{metric}", last)] == pytest.approx(value, rel=1e-6)
            assert history[(metric, last)] == pytest.approx(value, rel=1e-12)
