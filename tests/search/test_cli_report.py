"""``cxrkd report RUN [--out DIR]`` on a synthetic run folder (no Ray, no dataset store)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import optuna
import pandas as pd

from cxrkd.search.cli import main


def _write_synthetic_run(run: Path) -> None:
    """tests/results/synthetic_run.py's run folder (that folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "results" / "synthetic_run.py"
    spec = importlib.util.spec_from_file_location("synthetic_run_for_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_synthetic_run(run)


def _run_folder(root: Path) -> Path:
    run = root / "runs" / "demo-x"
    _write_synthetic_run(run)
    options = {"study": "pneumonia-kd", "profile": "demo", "dataset": "phantom-pneumonia"}
    (run / "run.json").write_text(json.dumps({"options": options, "dataset_fingerprint": "f"}))
    return run


def test_report_writes_tables_dashboard_and_optuna_storage(tmp_path, capsys):
    run = _run_folder(tmp_path)
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert (out / "tables" / "pneumonia_kd.md").is_file()
    assert "Table 4.1" in (out / "tables" / "pneumonia_kd.md").read_text()
    page = (out / "dashboard.html").read_text()
    assert "Test ROC curves of the final models" in page  # the scores were found
    studies = optuna.get_all_study_summaries(f"sqlite:///{out / 'optuna.db'}")
    assert {s.study_name for s in studies} == {
        "teacher--resnet50_teacher",
        "search--baseline_cnn",
        "search--resnet18_kd",
    }
    assert f"dashboard  {out / 'dashboard.html'}" in printed.out
    # The dataset store is not on this machine: said once, and the report goes on.
    assert "unknown dataset 'phantom-pneumonia'" in printed.err
    # The contract frames are collected into the run; --out leaves the rest of the run alone.
    assert len(pd.read_parquet(run / "trials.parquet")) == 16  # 8 searched + 4 cells x 2 seeds
    assert not (run / "dashboard.html").exists() and not (run / "tables").exists()


def test_report_without_out_writes_into_the_run(tmp_path):
    run = _run_folder(tmp_path)
    assert main(["report", str(run)]) == 0
    assert (run / "dashboard.html").is_file() and (run / "optuna.db").is_file()
    assert (run / "tables" / "pneumonia_kd.csv").is_file()


def test_report_of_a_folder_that_is_no_run_says_how_to_fix_it(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no run at" in err and "run.json" in err


def test_a_report_away_from_the_data_takes_the_task_from_the_run(capsys):
    """Without the store on this machine the caption's stand-in still knows the task: the
    study's, or multi-class with its classes when the trials recorded confusion counts."""
    from cxrkd.search.cli_report import manifest_of
    from cxrkd.spaces.studies import get_study

    study = get_study("pneumonia-kd", "demo")
    binary = manifest_of("elsewhere", study, lambda: pd.DataFrame(columns=["test_auc"]))
    assert (binary.task, binary.labels, binary.synthetic) == ("binary", (), False)
    classes = ["covid", "normal", "viral"]
    columns = ["test_auc", *[f"test_auroc_{c}" for c in classes],
               *[f"test_cm:{a}:{p}" for a in classes for p in classes]]  # fmt: skip
    multi = manifest_of("elsewhere", study, lambda: pd.DataFrame(columns=columns))
    assert (multi.task, multi.labels) == ("multiclass", ("covid", "normal", "viral"))
    assert "unknown dataset 'elsewhere'" in capsys.readouterr().err
