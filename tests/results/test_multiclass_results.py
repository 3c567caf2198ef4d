"""A multi-class run's results: confusion matrices (dashboard data, figure, tables), bootstrap
intervals and paired tests of the one-vs-rest macro AUROC, and the binary study's table spec
read with the argmax's metrics. Per-image scores are made by the loop's own
``per_image_scores`` from synthetic logits (labelled synthetic: no model is trained here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrkd.results.confusion_tables import TRUE_COLUMN, confusion_tables
from cxrkd.results.figure_data import CONFUSION, confusion_counts, multiclass_confusion
from cxrkd.results.held_out_scores import roc_curves
from cxrkd.results.plots import confusion_figure
from cxrkd.results.report import multiclass_spec
from cxrkd.results.table_specs import TableSpec
from cxrkd.results.uncertainty import CellStats
from cxrkd.trainables.data.pipeline import DatasetInfo
from cxrkd.trainables.evaluate import softmax, split_metrics
from cxrkd.trainables.loop import per_image_scores

skm = pytest.importorskip("sklearn.metrics")
CLASSES = ("covid", "normal", "pneumonia")
INFO = DatasetInfo(
    name="synthetic-3", kind="test", task="multiclass", labels=CLASSES, finding_labels=(),
    global_label="covid", resolution=16, n={}, positive_rate={}, fingerprint="fp",
    synthetic=True,
)  # fmt: skip
N = 60


def _labels() -> np.ndarray:
    y = np.random.default_rng(0).choice(3, N, p=[0.5, 0.2, 0.3])
    y[:3] = (0, 1, 2)
    return np.eye(3, dtype=np.float32)[y]


def _model(labels: np.ndarray, seed: int, skill: float):
    """Synthetic logits that favour the true class by ``skill``: ``(metrics, scores)``."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=labels.shape) + skill * labels).astype(np.float32)
    metrics = split_metrics(INFO, {"logits": logits}, labels, threshold=0.5)
    return metrics, per_image_scores(INFO, {"logits": logits}, labels), logits


@pytest.fixture(scope="module")
def run():
    labels = _labels()
    rows, scores, logits = [], {}, {}
    for cell, skill in (("kd", 2.0), ("baseline", 0.5)):
        for seed in (1, 2):
            metrics, arrays, z = _model(labels, seed + (10 if cell == "kd" else 0), skill)
            trial_id = f"{cell}-{seed}"
            test = {f"test_{k}": v for k, v in metrics.items()}
            rows.append(
                {
                    "stage": "final",
                    "status": "completed",
                    "cell": cell,
                    "trial_id": trial_id,
                    **test,
                }
            )
            scores[(cell, trial_id)] = arrays
            logits[(cell, trial_id)] = z
    return pd.DataFrame(rows), scores, logits, labels


def test_confusion_counts_and_tables_sum_the_seeds(run):
    trials, _, logits, labels = run
    y = labels.argmax(axis=1)
    want = sum(
        skm.confusion_matrix(y, logits[("kd", t)].argmax(1), labels=[0, 1, 2])
        for t in ("kd-1", "kd-2")
    )
    assert [a for _, a, _ in multiclass_confusion(trials)][::3] == list(CLASSES)
    counts = confusion_counts(trials).set_index(["cell", "actual", "predicted"])
    for i, a in enumerate(CLASSES):
        for j, p in enumerate(CLASSES):
            assert counts.loc[("kd", a, p), "count"] == want[i, j]
    table = confusion_tables(trials)["kd"]
    assert list(table.columns) == [TRUE_COLUMN, *CLASSES, "n_seeds"]
    np.testing.assert_array_equal(table[list(CLASSES)].to_numpy(), want)
    assert table["n_seeds"].tolist() == [2, 2, 2]
    fig = confusion_figure(confusion_counts(trials))
    assert list(fig.data[0].x) == [f"→ {c}" for c in CLASSES]
    np.testing.assert_array_equal(fig.data[0].z, want)


def test_a_binary_run_has_no_multiclass_confusion():
    row = {"stage": "final", "status": "completed", "cell": "c", "trial_id": "t"}
    trials = pd.DataFrame([{**row, **{c: 1 for c, _, _ in CONFUSION}, "test_auroc_x": 0.5}])
    assert multiclass_confusion(trials) == () and confusion_tables(trials) == {}
    assert set(confusion_counts(trials)["actual"]) == {"negative", "positive"}


def test_intervals_and_paired_test_of_the_macro_auroc(run):
    trials, scores, logits, labels = run
    cs = CellStats(trials, scores, n_boot=200)
    ones = np.ones((N, 1))
    y = labels.argmax(axis=1)
    arrays = scores[("kd", "kd-1")]
    p = softmax(logits[("kd", "kd-1")])
    # an all-ones resample reproduces the trial's test metrics, and sklearn's
    macro = skm.roc_auc_score(y, p, multi_class="ovr")
    assert cs.values(ones, arrays, "test_auc")[0] == pytest.approx(macro)
    assert trials.loc[0, "test_auc"] == pytest.approx(macro)
    normal = skm.roc_auc_score(y == 1, p[:, 1])
    assert cs.values(ones, arrays, "test_auroc_normal")[0] == pytest.approx(normal)
    low, high = cs.interval("kd", "test_auc")
    mean = trials.loc[trials["cell"] == "kd", "test_auc"].mean()
    assert low < mean < high
    assert cs.values(ones, arrays, "test_acc") is None  # argmax metrics: no interval here
    assert np.isnan(cs.interval("kd", "test_acc")).all()
    test = cs.paired("kd", "baseline", "test_auc")
    assert test.method == "paired bootstrap" and 0.0 <= test.p_value <= 1.0
    assert test.estimate > 0  # skill 2 against 0.5
    assert cs.paired("kd", "baseline", "test_auroc_normal").method == "DeLong"
    assert roc_curves(scores).empty  # no single ROC curve for a multi-class model


def test_a_binary_table_spec_reads_the_argmax_metrics(run):
    trials = run[0]
    spec = TableSpec(
        rows=[("kd", "KD")],
        metrics=[
            ("test_auc", "AUC"),
            ("test_acc_at_val_thr", "accuracy"),
            ("test_f1_at_val_thr", "F1"),
            ("test_auprc", "AUPRC"),
        ],
        hyperparams={},
        title="t",
        stem="t",
    )
    got = multiclass_spec(spec, trials).metrics
    assert got == [("test_auc", "AUC"), ("test_acc", "accuracy"), ("test_f1", "F1")]
