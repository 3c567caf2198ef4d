"""The registered teacher (the checkpoint the students distilled from) scored on test and shown
in the tables beside its re-trained seeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_run import lowres_final_run

from cxrkd.results.report import build_table
from cxrkd.results.study_tables import study_tables
from cxrkd.results.table_specs import registered
from cxrkd.results.teacher_scores import registered_rows, score_teacher, teacher_uri_of
from cxrkd.results.uncertainty import CellStats
from cxrkd.spaces.studies import get_study
from cxrkd.trainables.errors import CxrkdError


def _helpers():
    """tests/trainables/helpers.py (that folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "trainables" / "helpers.py"
    spec = importlib.util.spec_from_file_location("trainable_helpers_for_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    h = _helpers()
    data = h.multilabel_bundle(n=32, size=32)
    uri = h.train_teacher(tmp_path_factory.mktemp("storage"), data, **h.TEACHERS["multilabel"])
    return uri, data


def _trials(uri: str, model: str = "vit_tiny_patch16_224") -> pd.DataFrame:
    base = {"stage": "final", "status": "completed", "config/img_size": 32}
    return pd.DataFrame(
        [
            base | {"cell": "teacher_tiny", "trial_id": "a", "config/model": model},
            base | {"cell": "kd_tiny_8px_mlcak", "trial_id": "b", "config/teacher_path": uri}
            | {"config/model": "vit_tiny_patch16_224"},
        ]
    )  # fmt: skip


def test_the_registered_teacher_is_scored_like_a_final_model(teacher):
    uri, data = teacher
    metrics, scores = score_teacher(uri, data)
    assert scores["finding_logits"].shape == (16, 2) and scores["global_label"].shape == (16,)
    assert {"test_auroc_mlct", "test_auroc_mcct", "test_auprc_mlct", "test_auroc_nodule"} <= set(
        metrics
    )
    # The table's CI machinery reads the same numbers from the scores.
    trials = pd.DataFrame([{"stage": "final", "status": "completed", "cell": "t", "trial_id": "x"}])
    cs = CellStats(trials, {("t", "x"): scores}, n_boot=10)
    ones = np.ones((16, 1))
    for column in ("test_auroc_mlct", "test_auroc_mcct", "test_auroc_nodule"):
        assert cs.values(ones, scores, column)[0] == pytest.approx(metrics[column], abs=1e-9)


def test_the_teacher_is_found_through_the_kd_trials_by_model_and_size(teacher):
    uri, _ = teacher
    assert teacher_uri_of(_trials(uri), "teacher_tiny") == uri
    assert teacher_uri_of(_trials(uri, model="vit_small_patch16_224"), "teacher_tiny") is None
    assert teacher_uri_of(_trials("/nowhere"), "teacher_tiny") is None


def test_registered_rows_are_cached_in_the_run_and_a_failure_becomes_a_note(teacher, tmp_path):
    uri, data = teacher
    run = str(tmp_path / "run")
    cell = registered("teacher_tiny")
    rows, scores, notes = registered_rows(run, _trials(uri), [cell, "base_tiny_8px"], lambda: data)
    assert rows["cell"].tolist() == [cell] and not notes
    assert list((tmp_path / "run" / "teacher_scores").glob("*.npz"))

    def no_data():
        raise CxrkdError("unknown dataset 'x'")

    again, cached, _ = registered_rows(run, _trials(uri), [cell], no_data)  # from the cache
    assert again["test_auroc_mlct"].tolist() == rows["test_auroc_mlct"].tolist()
    (key,) = scores
    np.testing.assert_array_equal(cached[key]["finding_logits"], scores[key]["finding_logits"])
    _, _, notes = registered_rows(str(tmp_path / "other"), _trials(uri), [cell], no_data)
    assert "could not be scored on test (unknown dataset 'x')" in notes[cell]
    _, _, notes = registered_rows(run, _trials("/nowhere"), [cell], no_data)
    assert "no final KD trial names one registered teacher" in notes[cell]


def test_table1_shows_the_distilled_from_teacher_beside_its_retrained_seeds():
    study = get_study("lowres-kd", "demo")
    table1 = study_tables(study)[0]
    cells = [c for _, _, c, _ in table1.entries if not c.startswith("registered:")]
    trials, scores = lowres_final_run(list(dict.fromkeys(cells)))
    # The registered teacher: one model (one row, its own scores).
    teacher_trials, teacher_scores = lowres_final_run(["teacher_tiny"], seeds=1)
    teacher_trials["cell"] = registered("teacher_tiny")
    scores |= {(registered("teacher_tiny"), k[1]): v for k, v in teacher_scores.items()}
    shown = pd.concat([trials, teacher_trials], ignore_index=True)
    numeric, display, _ = build_table(table1, shown, CellStats(shown, scores, n_boot=100))
    hr_teacher = "HR 64 px teacher (distilled from)"
    assert display.columns[2:6].tolist() == [
        hr_teacher, f"{hr_teacher} 95% CI",
        "HR 64 px (teacher config, re-trained)", "HR 64 px (teacher config, re-trained) 95% CI",
    ]  # fmt: skip
    value = display.loc[0, hr_teacher]
    assert value.endswith("± –")  # one model: no spread over seeds
    assert display.loc[0, f"{hr_teacher} 95% CI"].startswith("[")
    teacher_row = numeric[numeric["col"] == hr_teacher]
    assert (teacher_row["n_seeds"] == 1).all()
