"""Comparison tables against answers worked out by hand, and their four written forms."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from cxrkd.results.tables import (
    STD_NOTE,
    TableError,
    comparison_table,
    format_table,
    render_latex_tabular,
    render_markdown,
    write_tables,
)

ROWS = [
    ("baseline_cnn", "CNN baseline"),
    ("resnet50_teacher", "ResNet-50 teacher"),  # no trial yet: a partial run
    ("resnet18_kd", "resnet18_kd (ours)"),
]
METRICS = [("test_acc_at_val_thr", "accuracy"), ("test_auc", "AUC")]
HYPER = {"baseline_cnn": ["lr", "weight_decay"], "resnet18_kd": ["lr", "alpha", "temperature"]}
CAPTION = "SYNTHETIC phantom data, no pretrained weights, demo scale."


def _trial(cell, seed, *, stage="final", status="completed", acc, auc, params, latency, **cfg):
    return {
        "study": "pneumonia-kd",
        "stage": stage,
        "cell": cell,
        "method": "x",
        "trial_id": f"{stage}-{cell}-{seed}",
        "status": status,
        "error": "boom" if status == "errored" else None,
        "config/seed": seed,
        **{f"config/{k}": v for k, v in cfg.items()},
        "test_acc_at_val_thr": acc,
        "test_auc": auc,
        "params": params,
        "latency_ms": latency,
    }


def _trials(**override) -> pd.DataFrame:
    cnn = {"params": 1_234_567, "lr": 3.2e-4, "weight_decay": 1e-5}
    kd = {"params": 11_176_512, "lr": 1e-3, "alpha": 0.62, "temperature": 4.1}
    rows = [
        # Three seeds: accuracy 0.80/0.90/1.00 -> mean 0.9, sample std 0.1 (population: 0.0816).
        _trial("baseline_cnn", 0, acc=0.80, auc=0.70, latency=1.0, **cnn),
        _trial("baseline_cnn", 1, acc=0.90, auc=0.80, latency=2.0, **cnn),
        _trial("baseline_cnn", 2, acc=1.00, auc=0.90, latency=10.0, **cnn),
        # Neither an errored/stopped trial nor one of another stage counts.
        _trial("baseline_cnn", 3, status="errored", acc=0.0, auc=0.0, latency=99.0, **cnn),
        _trial("baseline_cnn", 4, status="stopped", acc=0.0, auc=0.0, latency=99.0, **cnn),
        _trial("baseline_cnn", 5, stage="search", acc=0.0, auc=0.0, latency=99.0, **cnn),
        _trial("resnet18_kd", 0, acc=0.85, auc=0.95, latency=1.8, **{**kd, **override}),
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def table():
    return comparison_table(_trials(), rows=ROWS, metrics=METRICS, hyperparams=HYPER)


def test_without_scores_or_baselines_the_interval_and_test_columns_are_empty(table):
    assert {"accuracy_ci_low", "AUC_ci_high", "vs", "p", "p_metric"} <= set(table.columns)
    assert table[["accuracy_ci_low", "AUC_ci_high", "p"]].isna().all().all()
    assert not any(c.endswith("95% CI") or c in ("vs", "p") for c in format_table(table).columns)


def test_comparison_table_means_sample_std_and_medians(table):
    assert table["model"].tolist() == [name for _, name in ROWS]
    assert table["n_seeds"].tolist() == [3, 0, 1]
    cnn = table.iloc[0]
    assert cnn["accuracy_mean"] == pytest.approx(0.9)
    assert cnn["accuracy_std"] == pytest.approx(0.1)  # ddof=1, as STD_NOTE says
    assert cnn["AUC_mean"] == pytest.approx(0.8)
    assert cnn["params"] == 1_234_567
    assert cnn["latency_ms"] == 2.0  # median of 1, 2, 10
    kd = table.iloc[2]
    assert kd["accuracy_mean"] == pytest.approx(0.85) and math.isnan(kd["accuracy_std"])


def test_a_row_without_trials_is_kept_with_nans(table):
    teacher = table.iloc[1]
    assert teacher["n_seeds"] == 0 and teacher["hyperparameters"] == ""
    assert teacher[["accuracy_mean", "accuracy_std", "AUC_mean", "latency_ms"]].isna().all()
    assert pd.isna(teacher["params"])


def test_hyperparameter_string(table):
    assert table["hyperparameters"].tolist() == [
        "lr=3.2e-4, wd=1e-5",
        "",
        "lr=1e-3, alpha=0.62, T=4.1",
    ]


def test_hyperparameters_that_differ_across_seeds_are_shown():
    trials = _trials()
    trials.loc[1, "config/lr"] = 2e-3
    hyper = {"baseline_cnn": HYPER["baseline_cnn"]}
    out = comparison_table(trials, rows=ROWS[:1], metrics=METRICS, hyperparams=hyper)
    assert out.loc[0, "hyperparameters"] == "lr differs across seeds (3.2e-4, 2e-3), wd=1e-5"


def test_a_conditional_hyperparameter_no_trial_drew_is_left_out():
    # The open search's table lists T, which only vanilla KD draws: a run that never chose
    # vanilla has no config/temperature column at all.
    trials = _trials().drop(columns=["config/temperature"])
    out = comparison_table(trials, rows=ROWS, metrics=METRICS, hyperparams=HYPER)
    assert out["hyperparameters"].tolist()[2] == "lr=1e-3, alpha=0.62"


def test_params_that_differ_across_seeds_fail_naming_the_row():
    trials = _trials()
    trials.loc[1, "params"] = 42
    with pytest.raises(TableError, match="'baseline_cnn' mixes models"):
        comparison_table(trials, rows=ROWS, metrics=METRICS)


def test_unknown_metric_hyperparameter_or_row_fails_naming_it():
    with pytest.raises(TableError, match=r"\['test_acuracy'\] not in the trials frame"):
        comparison_table(_trials(), rows=ROWS, metrics=[("test_acuracy", "acc")])
    with pytest.raises(TableError, match=r"config/b'"):
        comparison_table(_trials(), rows=ROWS, metrics=METRICS, hyperparams={"resnet18_kd": ["b"]})
    with pytest.raises(TableError, match=r"rows \['resnet18_dk'\] not in rows"):
        comparison_table(_trials(), rows=ROWS, metrics=METRICS, hyperparams={"resnet18_dk": []})


def test_partial_run_without_metric_columns_renders():
    empty = pd.DataFrame(columns=["study", "stage", "cell", "method", "trial_id", "status"])
    out = format_table(comparison_table(empty, rows=ROWS, metrics=METRICS, hyperparams=HYPER))
    assert out["seeds"].tolist() == ["0", "0", "0"]
    assert set(out["accuracy"]) == {"–"} and set(out["params"]) == {"–"}


def test_format_table(table):
    display = format_table(table)
    assert list(display.columns) == [
        "model", "seeds", "accuracy", "AUC", "params", "latency", "hyperparameters",
    ]  # fmt: skip
    assert display.iloc[0].tolist()[:6] == [
        "CNN baseline", "3", "0.900 ± 0.100", "0.800 ± 0.100", "1.2M", "2.0 ms",
    ]  # fmt: skip
    assert display.iloc[1, 2:6].tolist() == ["–", "–", "–", "–"]
    assert display.iloc[2, 2:6].tolist() == ["0.850 ± –", "0.950 ± –", "11.2M", "1.8 ms"]
    assert format_table(table, digits=2).iloc[0, 2] == "0.90 ± 0.10"


def test_format_table_rejects_a_display_frame(table):
    with pytest.raises(TableError, match="numeric frame of comparison_table"):
        format_table(format_table(table))


def test_markdown_has_title_caption_note_and_one_line_per_row(table):
    text = render_markdown(format_table(table), title="Pneumonia", caption=CAPTION)
    assert text.startswith("# Pneumonia\n")
    assert CAPTION in text and STD_NOTE in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(ROWS)  # header, alignment, one per model
    assert {line.count("|") for line in rows} == {7 + 1}
    assert "| CNN baseline | 3 | 0.900 ± 0.100 |" in text


def test_latex_tabular_is_structurally_sound_and_escaped(table):
    tex = render_latex_tabular(format_table(table))
    assert tex.startswith(r"\begin{tabular}{lrrrrrl}")
    assert tex.rstrip().endswith(r"\end{tabular}")
    assert tex.count(r"\\") == 1 + len(ROWS)
    assert r"resnet18\_kd (ours)" in tex and r"0.900 $\pm$ 0.100" in tex
    assert not re.search(r"(?<!\\)_", tex)  # every underscore escaped
    for line in tex.splitlines():
        if line.endswith(r"\\"):
            assert len(re.findall(r"(?<!\\)&", line)) == 6  # 7 columns


def test_write_tables_writes_four_files(table, tmp_path):
    written = write_tables(
        format_table(table),
        str(tmp_path / "tables"),
        "pneumonia",
        numeric=table,
        title="Pneumonia 100% test",
        caption=CAPTION,
    )
    assert sorted(written) == ["csv", "html", "md", "tex"]
    assert CAPTION in (tmp_path / "tables" / "pneumonia.md").read_text()
    tex = (tmp_path / "tables" / "pneumonia.tex").read_text()
    assert tex.startswith(r"\begin{table}") and r"\begin{tabular}" in tex
    assert r"Pneumonia 100\% test" in tex and r"\caption{" in tex
    page = (tmp_path / "tables" / "pneumonia.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table" in page and CAPTION in page
    assert "0.900 ± 0.100" in page

    back = pd.read_csv(written["csv"])
    expected = table.assign(
        params=table["params"].astype(float),
        hyperparameters=table["hyperparameters"].replace("", np.nan),
        vs=np.nan,  # no baselines and no scores: empty text reads back as NaN
        p_metric=np.nan,
    )
    pd.testing.assert_frame_equal(back, expected)
