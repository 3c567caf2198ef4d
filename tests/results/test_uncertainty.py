"""Intervals and paired tests of table cells from saved per-image test scores, and the
``lowres-kd`` tables (Table 1, Table 2, per-finding) that carry them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from synthetic_run import (
    FINDINGS,
    lowres_final_run,
    lowres_test_labels,
    write_synthetic_run,
)

from cxrkd.results import stats
from cxrkd.results.report import build_table, cell_stats, table_caption
from cxrkd.results.study_tables import study_tables
from cxrkd.results.tables import CI_NOTE, comparison_table, format_table, render_markdown
from cxrkd.results.uncertainty import CellStats, UncertaintyError, is_auroc
from cxrkd.spaces.studies import get_study

STUDY = get_study("lowres-kd", "demo")
TABLES = study_tables(STUDY)
TABLE1, TABLE2, FINDING_TABLE = TABLES


def _cells(spec) -> list[str]:
    return list(dict.fromkeys(e[2] for e in spec.entries))


# The final cells (the registered teachers are not trials; see test_teacher_scores.py).
ALL_CELLS = [
    c
    for c in dict.fromkeys(c for spec in TABLES for c in _cells(spec))
    if not c.startswith("registered:")
]


@pytest.fixture(scope="module")
def run():
    trials, scores = lowres_final_run(ALL_CELLS)
    return trials, scores, CellStats(trials, scores, n_boot=300)


def test_unit_counts_reproduce_the_trials_test_metrics(run):
    trials, scores, cs = run
    ones = np.ones((cs.n_images, 1))
    columns = ["test_auroc_mlct", "test_auroc_mcct", "test_auprc_mlct", "test_auprc_mcct"]
    columns += ["test_sens_at_spec95_mlct", "test_auroc_nodule", "test_sens_at_spec95"]
    for _, row in trials.iloc[[0, 5, 11]].iterrows():
        arrays = scores[(row["cell"], row["trial_id"])]
        for c in columns:
            value = cs.values(ones, arrays, c, row["test_threshold"])[0]
            assert value == pytest.approx(row[c], abs=1e-6), c


def test_unit_counts_reproduce_threshold_metrics_at_the_validation_threshold():
    from cxrkd.trainables.evaluate import split_metrics

    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.4).astype(np.float32)
    logits = (1.5 * y + rng.normal(size=300)).astype(np.float32)
    info = SimpleNamespace(task="binary", finding_labels=(), label_columns=lambda: ((), 0))
    threshold = float(1 / (1 + np.exp(-logits[7])))  # one of the scores, as on validation
    test = split_metrics(info, {"logits": logits[:, None]}, y[:, None], threshold=threshold)
    row = {"stage": "final", "status": "completed", "cell": "c", "trial_id": "t"}
    trials = pd.DataFrame([row | {"test_threshold": threshold}])
    cs = CellStats(trials, {("c", "t"): {"global_logit": logits, "global_label": y}}, n_boot=10)
    ones = np.ones((300, 1))
    arrays = {"global_logit": logits, "global_label": y}
    for key in ("acc", "precision", "recall", "f1", "specificity"):
        for column in (f"test_{key}", f"test_{key}_at_val_thr"):
            value = cs.values(ones, arrays, column, threshold)[0]
            assert value == pytest.approx(test[column.removeprefix("test_")], abs=1e-12), column
    assert cs.values(ones, arrays, "test_f1_at_val_thr") is None  # no threshold recorded
    assert cs.values(ones, arrays, "params") is None


def test_interval_averages_the_seeds_per_resample(run):
    trials, scores, cs = run
    cell = "kd_tiny_16px_mlcak"
    per_seed = [
        stats.weighted_auc(cs.counts, a["global_label"], 1 / (1 + np.exp(-a["global_logit"])))
        for (c, _), a in scores.items()
        if c == cell
    ]
    expected = stats.percentile_interval(np.mean(per_seed, axis=0))
    assert cs.interval(cell, "test_auroc_mcct") == pytest.approx(expected)
    mean = trials.loc[trials["cell"] == cell, "test_auroc_mcct"].mean()
    low, high = expected
    assert low < mean < high and high - low < 0.2


def test_paired_test_is_delong_on_the_seed_ensembles(run):
    _, scores, cs = run
    kd, base = "kd_tiny_16px_mlcak", "base_tiny_16px"

    def ensemble(cell):
        probs = [1 / (1 + np.exp(-a["global_logit"].astype(float))) for (c, _), a in scores.items()]
        cells = [c for c, _ in scores]
        return np.mean([p for p, c in zip(probs, cells, strict=True) if c == cell], axis=0)

    y = lowres_test_labels()[:, -1]
    expected = stats.delong_test(y, ensemble(kd), ensemble(base))
    got = cs.paired(kd, base, "test_auroc_mcct")
    assert got.method == "DeLong" and got.p_value == pytest.approx(expected.p_value, rel=1e-6)
    assert got.p_value < 0.05 and got.estimate > 0  # mlcak separates better (see synthetic_run)
    macro = cs.paired(kd, base, "test_auroc_mlct")
    assert macro.method == "paired bootstrap" and 0 < macro.p_value <= 1
    finding = cs.paired(kd, base, "test_auroc_nodule")
    assert finding.method == "DeLong"
    assert cs.paired(kd, "no_such_cell", "test_auroc_mcct") is None


def test_models_tested_on_different_images_are_refused(run):
    trials, scores, _ = run
    key = next(iter(scores))
    bad = dict(scores)
    bad[key] = {**scores[key], "global_label": 1 - scores[key]["global_label"]}
    with pytest.raises(UncertaintyError, match="tested on different images"):
        CellStats(trials, bad)


def test_is_auroc():
    assert is_auroc("test_auc") and is_auroc("test_auroc_mlct") and is_auroc("test_auroc_nodule")
    assert not is_auroc("test_auroc_mean") and not is_auroc("test_auprc_mcct")


# --- lowres-kd tables --------------------------------------------------------------------------


def test_table1_labels_its_hr_column_and_shows_intervals(run):
    trials, _, cs = run
    numeric, display, _ = build_table(TABLE1, trials, cs)
    hr = "HR 64 px (teacher config, re-trained)"
    teacher = "HR 64 px teacher (distilled from)"  # not scored in this run: '–', no CI column
    assert list(display.columns) == [
        "ViT", "task", teacher,
        hr, f"{hr} 95% CI", "32 px", "32 px 95% CI", "16 px", "16 px 95% CI", "8 px",
        "8 px 95% CI",
    ]  # fmt: skip
    assert set(display[teacher]) == {"–"}
    numeric = numeric[numeric["col"] != teacher]
    assert numeric[["ci_low", "ci_high"]].notna().all().all()
    assert (numeric["ci_low"] < numeric["mean"]).all()
    assert (numeric["mean"] < numeric["ci_high"]).all()
    caption = table_caption(TABLE1, "demo", cs)
    assert "registered teacher checkpoint every student of that size distilled from" in caption
    assert "standard deviation over those seeds" in caption


def test_table2_has_a_p_column_per_resolution(run):
    trials, _, cs = run
    numeric, display, extra = build_table(TABLE2, trials, cs)
    for low in ("32 px", "16 px", "8 px"):
        assert {f"{low} 95% CI", f"{low} p"} <= set(display.columns)
    assert (
        numeric["vs"]
        == numeric["cell"].str.replace(r"kd_(\w+?)_(\d+px)_.*", r"base_\1_\2", regex=True)
    ).all()
    assert numeric["p"].between(0, 1).all()
    assert set(numeric["p_method"]) == {"DeLong", "paired bootstrap"}
    mlcak = numeric[
        (numeric["cell"] == "kd_tiny_16px_mlcak") & numeric["metric"].str.endswith("mcct")
    ]
    assert mlcak["p"].iloc[0] < 0.05
    text = render_markdown(display, title="Table 2", caption="c")
    assert CI_NOTE in text and extra  # and the chosen configurations


def test_per_finding_table_has_one_column_per_finding(run):
    trials, _, cs = run
    numeric, display, _ = build_table(FINDING_TABLE, trials, cs)
    assert list(display.columns) == ["ViT", "resolution", "approach", *FINDINGS]
    assert len(display) == len(_cells(FINDING_TABLE))
    assert set(numeric["metric"]) == {f"test_auroc_{f}" for f in FINDINGS}
    kd_row = display[display["approach"] == "mlcak"].iloc[0]
    assert "[" in kd_row["nodule"] and " p" in kd_row["nodule"]  # p=0.031 or p<0.001
    base_row = display[display["approach"] == "no KD"].iloc[0]
    assert "[" in base_row["nodule"] and " p" not in base_row["nodule"]
    kd = numeric[numeric["cell"] == "kd_tiny_32px_vanilla"]
    assert kd["p"].notna().all() and (kd["vs"] == "base_tiny_32px").all()
    assert CI_NOTE in render_markdown(display, title="findings", caption="c")


def test_a_run_with_some_cells_only_still_renders():
    subset = ["teacher_tiny", "kd_tiny_16px_mlcak", "kd_tiny_16px_vanilla"]  # no baseline cells
    trials, scores = lowres_final_run(subset)
    cs = CellStats(trials, scores, n_boot=100)
    for spec in TABLES:
        numeric, display, _ = build_table(spec, trials, cs)
        assert len(display) > 0
    numeric, display, _ = build_table(TABLE2, trials, cs)
    assert numeric["p"].isna().all()  # no baseline ran: no test, shown as '–'
    done = numeric[numeric["n_seeds"] > 0]
    assert set(done["cell"]) == {"kd_tiny_16px_mlcak", "kd_tiny_16px_vanilla"}
    assert done[["ci_low", "ci_high"]].notna().all().all()
    assert set(display["32 px"]) == {"–"}
    # Without any saved scores the tables still render, without intervals.
    _, display, _ = build_table(TABLE1, trials, None)
    assert not any(c.endswith("95% CI") for c in display.columns)
    assert "No per-image test scores" in table_caption(TABLE1, "demo", None)


# --- pneumonia-kd: the comparison table ---------------------------------------------------------


def test_pneumonia_table_has_ci_and_p_columns_from_a_synthetic_run(tmp_path):
    (spec,) = study_tables(get_study("pneumonia-kd", "demo"))
    trials, _ = write_synthetic_run(tmp_path / "run")
    # The synthetic run's KD student is compared with the frozen ResNet-18 here, as the
    # synthetic run has no fine-tuned one.
    cs = cell_stats(str(tmp_path / "run"), trials)
    metrics = [("test_acc_at_val_thr", "accuracy"), ("test_auc", "AUC")]
    rows = [(k, n) for k, n in spec.rows if k != "resnet18_finetuned"]
    table = comparison_table(
        trials, rows=rows, metrics=metrics, stats=cs, baselines={"resnet18_kd": "resnet18_frozen"}
    )
    kd = table.set_index("row").loc["resnet18_kd"]
    assert kd["vs"] == "ResNet-18 fixed extractor" and 0 <= kd["p"] <= 1
    assert kd["p_metric"] == "AUC, DeLong"
    assert kd["AUC_ci_low"] < kd["AUC_ci_high"]
    assert math.isnan(table.set_index("row").loc["baseline_cnn", "p"])
    # accuracy at the validation threshold needs test_threshold, which this run lacks
    assert table["accuracy_ci_low"].isna().all()
    display = format_table(table)
    assert {"AUC 95% CI", "vs", "p"} <= set(display.columns)
    assert "accuracy 95% CI" not in display.columns
    # The spec's own pairing: its baseline did not run in this (partial) run, so p is '–'.
    table = comparison_table(trials, rows=spec.rows[:2] + spec.rows[3:], metrics=metrics,
                             stats=cs, baselines=spec.baselines)  # fmt: skip
    assert format_table(table).set_index("model").loc["ResNet-18 KD student", "p"] == "–"
