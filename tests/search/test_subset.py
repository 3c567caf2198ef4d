"""``--only``: part of a study's grid plus the teachers it needs (issue 9, item 7).

The selection is a pure function of the study and the patterns (tested on the real studies'
paper and demo grids); one tiny real run checks that exactly the selected cells run, that the
tables hold them only, and that ``run.json`` keeps the subset for ``search resume``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_export import check_export_and_predict
from test_plan import assert_plan_matches_run

import cxrkd
from cxrkd.results.study_tables import study_tables
from cxrkd.results.table_specs import registered
from cxrkd.search.cli import main
from cxrkd.search.run_state import RunOptions, read_run
from cxrkd.search.study_options import study_with_options
from cxrkd.search.subset import restrict_study, select_cells, study_cells
from cxrkd.spaces.studies import StudyState, get_study, resolve


def registered_teacher() -> str:
    """The table key of pneumonia-kd's registered teacher (a row the report may show)."""
    return registered("resnet50_teacher")


def _keys(study) -> dict[str, list[str]]:
    return {s.name: [c.key for c in s.cells] for s in study.stages if s.role != "final"}


def test_a_glob_selects_the_matching_cells_of_the_paper_grid():
    study = get_study("lowres-kd", "paper")
    selection = select_cells(study, ["*tiny*"])
    assert selection.matched[0] == "teacher_tiny" and selection.teachers == ()
    assert len(selection.matched) == 1 + 3 + 3 * 4  # teacher, 3 no-KD cells, 3 x 4 KD cells
    assert all("tiny" in key for key in selection.matched)
    restricted = restrict_study(study, selection)
    assert _keys(restricted) == {
        "teacher": ["teacher_tiny"],
        "search": [k for k in selection.matched if k != "teacher_tiny"],
    }
    # The tables keep the rows of the selected cells only (ViT-Tiny), every one of them.
    tables = {t.stem: t for t in study_tables(restricted)}
    assert set(tables) == {t.stem for t in study_tables(study)}
    for full in study_tables(study):
        assert tables[full.stem].entries == [e for e in full.entries if "tiny" in e[2]]
    assert {row[0] for row, *_ in tables["lowres_table1"].entries} == {"ViT-Tiny"}
    assert len(tables["lowres_table2"].entries) == 4 * 2 * 3  # approaches x tasks x sizes


def test_a_student_brings_its_teacher_and_nothing_else():
    study = get_study("lowres-kd", "paper")
    selection = select_cells(study, ["kd_small_28px_mlcak", "base_base_56px"])
    assert selection.matched == ("base_base_56px", "kd_small_28px_mlcak")  # study order
    assert selection.teachers == ("teacher_small",)  # the no-KD cell needs no teacher
    assert _keys(restrict_study(study, selection)) == {
        "teacher": ["teacher_small"],
        "search": ["base_base_56px", "kd_small_28px_mlcak"],
    }


def test_an_open_search_brings_the_teacher_of_every_size_it_may_choose():
    study = get_study("lowres-kd-open", "demo")
    selection = select_cells(study, ["open"])
    assert selection.teachers == ("teacher_tiny", "teacher_small")


def test_the_final_stage_retrains_the_matched_cells_only():
    study = get_study("pneumonia-kd", "demo")
    restricted = restrict_study(study, select_cells(study, ["resnet18_kd"]))
    # After the search: the teacher and the KD student were chosen, nothing else.
    state = StudyState(
        teachers={"resnet50_teacher": "/t"},
        best={"resnet50_teacher": {"lr": 1.0}, "resnet18_kd": {"lr": 2.0}},
    )
    final = next(s for s in restricted.stages if s.role == "final")
    ((cell,),) = [resolve(c, state) for c in final.cells]
    assert cell.key == "resnet18_kd" and [c["lr"] for c in cell.configs] == [2.0, 2.0]
    (table,) = study_tables(restricted)
    (full,) = study_tables(study)
    # The KD student's row, and the registered teacher it distilled from where the study
    # shows it (that teacher was trained); no row of a cell that did not run.
    assert table.rows == [
        (key, name) for key, name in full.rows if key in ("resnet18_kd", registered_teacher())
    ]
    assert "resnet18_kd" in dict(table.rows) and set(table.hyperparams) <= {
        "resnet18_kd",
        registered_teacher(),
    }
    assert not getattr(table, "baselines", {})  # its no-KD pair did not run: no paired test
    both = restrict_study(study, select_cells(study, ["resnet18_kd", "resnet18_finetuned"]))
    assert getattr(study_tables(both)[0], "baselines", None) in (
        None,
        {"resnet18_kd": "resnet18_finetuned"},
    )


def test_a_pattern_that_matches_nothing_lists_the_cells():
    study = get_study("lowres-kd", "demo")
    with pytest.raises(Exception, match=r"--only \['\*huge\*'\] matches no cell") as err:
        select_cells(study, ["*tiny*", "*huge*"])
    assert str([c.key for c in study_cells(study)]) in str(err.value)


def test_the_subset_goes_through_the_options_resume_reads():
    options = RunOptions(study="pneumonia-kd", only=["baseline_cnn"])
    study = study_with_options(options)
    assert _keys(study) == {"teacher": [], "search": ["baseline_cnn"]}


@pytest.mark.slow
def test_only_runs_the_matched_cell_and_its_teacher(
    tiny_store, tiny, tmp_path, local_ray, capsys, caplog
):
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    storage = tmp_path / "runs"
    argv = ["search", "run", "pneumonia-kd", "--dataset", tiny_store.name, "--name", "sub",
            "--storage", str(storage), "--num-samples", "1", "--max-concurrent", "2",
            "--only", "resnet18_k?", *sets]  # fmt: skip
    assert main(argv) == 0
    # None of Tune's warnings that do not apply to a study (search.ray_runtime.init_ray).
    for warning in ("snapshotting has been triggered", "Could not fetch metrics"):
        assert warning not in caplog.text, warning
    run = storage / "sub"
    # Tune's last snapshot holds no running statistics of the ended trials (search.lean_trials).
    snapshot = max((run / "study").glob("experiment_state-*.json"))
    metas = [json.loads(meta) for _, meta in json.loads(snapshot.read_text())["trial_data"]]
    assert len(metas) == 4 and all(meta["metric_analysis"] == {} for meta in metas)
    # `search plan` with the same arguments planned what ran (test_plan's check).
    plan_args = ["pneumonia-kd", "--dataset", tiny_store.name, "--num-samples", "1",
                 "--only", "resnet18_k?", *sets]  # fmt: skip
    assert_plan_matches_run(plan_args, run, tmp_path, capsys)
    # Its final KD student exported and applied to images (test_export's check).
    check_export_and_predict(run, tiny_store, tmp_path, capsys)
    trials = pd.read_parquet(run / "trials.parquet")
    ran = trials.groupby("stage")["cell"].unique().map(sorted).to_dict()
    assert ran == {"teacher": ["resnet50_teacher"], "search": ["resnet18_kd"],
                   "final": ["resnet18_kd"]}  # fmt: skip
    assert (trials["stage"] == "final").sum() == 2  # the demo's two seeds
    assert (trials["status"] == "completed").all()
    # Each trial says what it ran on (this machine has no GPU).
    assert trials["device"].str.startswith("CPU").all()
    tables = run / "tables"
    md = (tables / "pneumonia_kd.md").read_text()
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    assert "ResNet-18 KD student" in rows
    # No row of a cell that did not run (the teacher's final re-training did not either).
    assert not {"Baseline CNN", "ResNet-18 fine-tuned", "ResNet-18 fixed extractor",
                "ResNet-50 teacher"} & set(rows), rows  # fmt: skip
    csv_rows = set(pd.read_csv(tables / "pneumonia_kd.csv")["row"])
    assert_same_numbers_as_before(tables / "pneumonia_kd.csv")
    assert "resnet18_kd" in csv_rows and csv_rows <= {"resnet18_kd", registered_teacher()}
    # Named with --dataset, the phantom still marks every rendered table.
    for suffix in ("md", "tex", "html"):
        assert "SYNTHETIC" in (tables / f"pneumonia_kd.{suffix}").read_text(), suffix
    raw = read_run(str(run))
    assert raw["options"]["only"] == ["resnet18_k?"]
    prov = raw["provenance"]
    assert set(prov["versions"]) == {"cxrkd", "torch", "timm", "ray", "optuna"}
    assert all(prov["versions"].values())
    assert prov["git"]["checkout"] is True and len(prov["git"]["commit"]) == 40
    # A resume keeps the subset: nothing is left to run, and the report has the same rows.
    # ... through the public API this time (cxrkd.resume is `search resume`), whose frames are
    # the run's own.
    assert cxrkd.resume(str(run)) == str(run)
    api_trials, api_epochs = cxrkd.load_run(str(run))
    assert sorted(api_trials["trial_id"]) == sorted(trials["trial_id"])
    assert len(api_epochs) == len(pd.read_parquet(run / "epochs.parquet"))
    assert (tables / "pneumonia_kd.md").read_text().count("|") == md.count("|")
    assert len(pd.read_parquet(run / "trials.parquet")) == len(trials)
    resumed = json.loads(Path(run / "run.json").read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["provenance"]["versions"] == prov["versions"]
    assert "only the cells matching ['resnet18_k?']" in capsys.readouterr().err


PINS = Path(__file__).parent / "pins" / "pneumonia_kd_only_kd"


def pin_for_this_cpu() -> Path:
    """The pinned table for this CPU's arithmetic: float32 results of the same code differ
    between CPUs with AVX-512 and CPUs with AVX2 only (other kernels, other rounding), so a
    one-trial AUROC moves by a rank or two. Keyed by the vector unit torch's own kernels use."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    pin = PINS / f"{capability}.csv"
    have = sorted(p.stem for p in PINS.glob("*.csv"))
    assert pin.exists(), (
        f"no pinned table for this CPU ({capability}; have {have}): "
        f"copy this test's table to {pin} in a commit of code whose numbers match an existing "
        "pin on its own CPU, and say so in the commit"
    )
    return pin


def assert_same_numbers_as_before(table_csv: Path) -> None:
    """The KD student's table row, value for value, as the code before the distillation core
    and frozen studies computed it (issue 11: "existing studies, tables and numbers stay as
    they are"). ``pins/pneumonia_kd_only_kd/AVX2.csv`` was written by commit 52e27ec running
    this very command (same store, seeds and ``--set``; one trial per cell, so no
    early-stopping order can differ) on a CPU without AVX-512; ``AVX512.csv`` by commit
    643b59b (whose numbers equal that pin on such a CPU) on a Xeon with AVX-512 and AMX. Only
    the latency, a timing, may differ. To change the numbers on purpose, copy the new tables
    over the pins and say why in the commit."""
    got = pd.read_csv(table_csv).drop(columns=["latency_ms"])
    want = pd.read_csv(pin_for_this_cpu()).drop(columns=["latency_ms"])
    assert list(got.columns) == list(want.columns)
    assert got[["row", "model", "hyperparameters"]].equals(
        want[["row", "model", "hyperparameters"]]
    )
    numbers = want.select_dtypes("number").columns
    pd.testing.assert_frame_equal(got[numbers], want[numbers], rtol=1e-6, atol=1e-9)
