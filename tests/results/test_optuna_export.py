"""Each search cell as an Optuna study: states, values, params, curves; the SQLite export
that optuna-dashboard opens (local and S3); the notes that replace empty plots."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from synthetic_run import synthetic_frames, write_synthetic_run

from cxrkd.results.optuna_export import (
    cell_studies,
    export_studies,
    fit_distributions,
    infer_distributions,
    plot_notes,
    study_distributions,
)
from cxrkd.spaces.studies import get_study

DISTS = {
    ("teacher", "resnet50_teacher"): {
        "lr": FloatDistribution(5e-4, 5e-3, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    },
    ("search", "baseline_cnn"): {
        "lr": FloatDistribution(5e-4, 5e-3, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
        "dropout": FloatDistribution(0.0, 0.6),
    },
}


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()


def test_study_distributions_come_from_the_study_spaces():
    dists = study_distributions(get_study("pneumonia-kd", "demo"))
    # Search cells only: the final stage re-trains chosen configurations.
    assert {stage for stage, _ in dists} == {"teacher", "search"}
    base = dists[("search", "baseline_cnn")]
    # batch_size is pinned by the demo profile, so it is not searched.
    assert set(base) == {"lr", "weight_decay", "dropout"}
    assert base["lr"] == FloatDistribution(5e-4, 5e-3, log=True)  # the profile's bounds
    # kd_approach: pneumonia-kd's KD cell has one choice, hinton (pneumonia-kd-open has more).
    kd = dists[("search", "resnet18_kd")]
    assert set(kd) == {"lr", "weight_decay", "alpha", "temperature", "kd_approach"}
    assert kd["kd_approach"].choices == ("hinton",)
    assert dists[("search", "resnet18_kd")]["temperature"].log


def test_cell_studies_map_statuses_values_params_and_curves(frames):
    trials, epochs = frames
    studies = cell_studies(trials, epochs, metric="val_auc", distributions=DISTS)
    assert set(studies) == set(DISTS)  # cells without distributions are not search cells
    base = studies[("search", "baseline_cnn")]
    assert base.study_name == "search--baseline_cnn"
    by_id = {t.user_attrs["trial_id"]: t for t in base.trials}
    assert [t.user_attrs["trial_id"] for t in base.trials] == ["b1", "b2", "b3", "b4"]
    assert by_id["b1"].state == TrialState.COMPLETE and by_id["b1"].value == pytest.approx(0.70)
    # Stopped early by ASHA = pruned, with its last value (as study.tell does).
    assert by_id["b2"].state == TrialState.PRUNED and by_id["b2"].value == pytest.approx(0.75)
    assert by_id["b3"].state == TrialState.FAIL and by_id["b3"].user_attrs["error"]
    assert by_id["b2"].intermediate_values == {1: 0.70, 2: 0.75}
    assert by_id["b4"].params == {"lr": 6e-4, "weight_decay": 1e-3, "dropout": 0.1}
    assert by_id["b4"].distributions["lr"].log
    assert base.best_trial.user_attrs["trial_id"] == "b4"  # pruned b2 is not a candidate


def test_cell_studies_without_distributions_infer_them_and_skip_the_final_stage(frames):
    trials, epochs = frames
    studies = cell_studies(trials, epochs, metric="val_auc")
    assert set(studies) == {
        ("teacher", "resnet50_teacher"),
        ("search", "baseline_cnn"),
        ("search", "resnet18_kd"),
    }
    kd = {t.user_attrs["trial_id"]: t for t in studies[("search", "resnet18_kd")].trials}
    assert kd["k2"].state == TrialState.RUNNING
    assert set(kd["k1"].params) == {"lr", "weight_decay", "alpha", "temperature"}


def test_infer_distributions_by_type():
    group = pd.DataFrame(
        {
            "config/lr": [1e-5, 1e-2],
            "config/dropout": [0.1, 0.5],
            "config/batch_size": [16, 64],
            "config/model": ["a", "b"],
        }
    )
    dists = infer_distributions(group, ["lr", "dropout", "batch_size", "model"])
    assert dists["lr"] == FloatDistribution(1e-5, 1e-2, log=True)  # three decades
    assert dists["dropout"] == FloatDistribution(0.1, 0.5)
    assert dists["batch_size"] == IntDistribution(16, 64)
    assert dists["model"] == CategoricalDistribution(["a", "b"])


def test_fit_distributions_infers_where_a_run_used_other_bounds(frames):
    trials, _ = frames
    group = trials[(trials["stage"] == "search") & (trials["cell"] == "baseline_cnn")]
    narrow = {"lr": FloatDistribution(1e-3, 2e-3, log=True), "dropout": FloatDistribution(0, 0.6)}
    fitted = fit_distributions(group, narrow)
    assert fitted["dropout"] is narrow["dropout"]  # holds every value: kept
    assert fitted["lr"] == FloatDistribution(6e-4, 4e-3, log=True)  # spans the values, log kept


def _study(trials: list[tuple[dict, float | None, TrialState]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dists = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    for params, value, state in trials:
        used = {k: dists[k] for k in params}
        study.add_trial(create_trial(params=params, distributions=used, value=value, state=state))
    return study


C, P = TrialState.COMPLETE, TrialState.PRUNED


@pytest.mark.parametrize(
    ("trials", "expected"),
    [
        ([], {"history": "no trial", "parallel": "no trial", "importance": "no trial"}),
        ([({"x": 0.1}, 0.5, P)], dict.fromkeys(("history", "parallel", "importance"), "no trial")),
        ([({"x": 0.1}, 0.5, C)], {"importance": "at least 2"}),
        ([({"x": 0.1}, 0.5, C), ({"x": 0.1}, 0.6, C)], {"importance": "no searched parameter"}),
        ([({"x": 0.1}, 0.5, C), ({"y": 0.2}, 0.6, C)], {"parallel": "share", "importance": "no"}),
        # Tied values: PED-ANOVA's top and reference sets coincide; every bar would be equal.
        ([({"x": 0.1}, 0.5, C), ({"x": 0.2}, 0.5, C)], {"importance": "too few completed"}),
        ([({"x": 0.1}, 0.5, C), ({"x": 0.2}, 0.6, C)], {}),
    ],
)
def test_plot_notes_explain_empty_plots(trials, expected):
    notes = plot_notes(_study(trials))
    for kind in ("history", "parallel", "importance"):
        if kind in expected:
            assert expected[kind] in notes[kind]
        else:
            assert notes[kind] is None


def test_export_writes_one_sqlite_storage_that_optuna_loads(tmp_path, frames):
    trials, epochs = frames
    uri = tmp_path / "run" / "optuna.db"
    names = export_studies(str(uri), trials, epochs, metric="val_auc", distributions=DISTS)
    assert names == ["teacher--resnet50_teacher", "search--baseline_cnn"]
    storage = f"sqlite:///{uri}"
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(storage)) == sorted(names)
    study = optuna.load_study(study_name="search--baseline_cnn", storage=storage)
    assert [t.state for t in study.trials] == [C, P, TrialState.FAIL, C]
    assert study.best_value == pytest.approx(0.72)
    assert study.user_attrs["metric"] == "val_auc"
    # A second report replaces the storage instead of adding the trials again.
    export_studies(str(uri), trials, epochs, metric="val_auc", distributions=DISTS)
    assert len(optuna.load_study(study_name="search--baseline_cnn", storage=storage).trials) == 4
    assert not list(uri.parent.glob("*.tmp-*"))


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto S3 server; pyarrow and boto3 both honour AWS_ENDPOINT_URL."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    # moto keeps its buckets per process, across servers: a bucket of this file's own.
    boto3.client("s3").create_bucket(Bucket="cxrkd-dashboard-test")
    yield "s3://cxrkd-dashboard-test"
    server.stop()


def test_dashboard_and_optuna_storage_of_a_run_on_s3(s3_bucket, tmp_path):
    from cxrkd.results.dashboard import write_study_dashboard
    from cxrkd.results.frames import load_records
    from cxrkd.results.held_out_scores import load_test_scores
    from cxrkd.trainables import storage

    write_synthetic_run(tmp_path / "run")
    run = storage.join(s3_bucket, "run")
    storage.upload_dir(tmp_path / "run", run)
    trials, epochs = load_records(run)
    trials["checkpoint_uri"] = None  # recorded local paths mean nothing on S3: scan instead
    scores = load_test_scores(run, trials)
    assert len(scores) == 8
    assert all(not math.isnan(s["global_logit"].sum()) for s in scores.values())
    study = get_study("pneumonia-kd", "demo")
    written = write_study_dashboard(run, study, trials, epochs, caption="on S3")
    assert written == {"dashboard": f"{run}/dashboard.html", "optuna": f"{run}/optuna.db"}
    page = storage.read_text(written["dashboard"])
    assert "on S3" in page and "Test ROC curves of the final models" in page  # scores found
    assert "No ROC curves" not in page
    local = tmp_path / "copy.db"
    fs, path = storage.filesystem(written["optuna"])
    local.write_bytes(fs.open_input_file(path).read())
    study_names = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{local}")}
    assert "search--baseline_cnn" in study_names
