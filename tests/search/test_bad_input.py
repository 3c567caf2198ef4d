"""What a user can get wrong fails before any trial (and before Ray starts), with the fix.

Each case goes through the real command line (``search.cli.main``) and checks the exit code,
the message, and that nothing was started or written; the last test runs a real (tiny) search
in which one trial's loss turns NaN: that trial ends errored, with the reason, and the study
goes on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from cli_checks import fails
from probes import probe_profile

from cxrkd.results.study_tables import STUDY_TABLES
from cxrkd.results.table_specs import TableSpec
from cxrkd.search.run_state import RunOptions
from cxrkd.search.runner import run_study
from cxrkd.spaces.studies import STUDIES, FixedCell, Profile, Stage, Study, final_cells


@pytest.fixture
def run_args(tiny_store, tmp_path, tiny) -> list[str]:
    """``search run`` arguments of a valid tiny run (the cases below spoil one thing)."""
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    storage = str(tmp_path / "runs")
    return ["search", "run", "pneumonia-kd", "--dataset", tiny_store.name, "--name", "R",
            "--storage", storage, *sets]  # fmt: skip


def test_unknown_study_lists_the_known_ones(capsys):
    fails(capsys, ["search", "run", "pneumonia-kdd"], r"unknown study 'pneumonia-kdd'",
           r"did you mean pneumonia-kd", r"known studies: \[.*'pneumonia-kd'")  # fmt: skip


def test_unknown_profile_lists_the_known_ones(capsys):
    fails(capsys, ["search", "run", "pneumonia-kd", "--profile", "huge"],
           r"unknown profile 'huge'", r"known profiles: \['demo', 'paper'\]")  # fmt: skip


def test_unknown_set_key_lists_the_valid_keys(capsys):
    err = fails(capsys, ["search", "run", "pneumonia-kd", "--set", "epoch=3"],
                 r"unknown --set key\(s\) \['epoch'\]", r"valid keys: ")  # fmt: skip
    assert "'epochs'" in err and "'temperature'" in err  # a KD key of this study is valid


def test_set_without_equals_sign(capsys):
    fails(capsys, ["search", "run", "pneumonia-kd", "--set", "epochs5"],
           r"--set takes key=value, got 'epochs5'")  # fmt: skip


def test_set_method_is_refused(capsys):
    fails(capsys, ["search", "run", "pneumonia-kd", "--set", "method=kd_logit"],
           r"--set method=\.\.\. is not allowed")  # fmt: skip


def test_set_value_of_the_wrong_type(capsys):
    fails(capsys, ["search", "run", "pneumonia-kd", "--set", "lr=fast"],
           r"bad value lr='fast': expected float")  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "pattern"),
    [
        ("temperature=0", r"temperature=0\.0"),
        ("alpha=1.5", r"alpha=1\.5"),
        ("batch_size=0", r"bad value batch_size=0: expected at least 1"),
        ("lr=-1", r"bad value lr=-1\.0: expected a positive learning rate"),
    ],
)
def test_bad_values_fail_before_the_run_is_created(capsys, run_args, tmp_path, setting, pattern):
    fails(capsys, [*run_args, "--set", setting], pattern)
    assert not (tmp_path / "runs" / "R" / "run.json").exists()


def test_bad_numbers_of_trials(capsys, run_args):
    fails(capsys, [*run_args, "--num-samples", "0"], r"--num-samples must be at least 1, got 0")
    fails(capsys, [*run_args, "--max-concurrent", "0"], r"--max-concurrent must be at least 1")


def test_bad_trial_resources(capsys, run_args):
    fails(capsys, [*run_args, "--cpus-per-trial", "0"], r"--cpus-per-trial must be > 0, got 0\.0")
    fails(capsys, [*run_args, "--gpus-per-trial", "-1"], r"--gpus-per-trial must be >= 0, got -1")


def test_unknown_dataset_lists_the_known_ones(capsys, run_args):
    args = [*run_args]
    args[args.index("--dataset") + 1] = "nope"
    fails(capsys, args, r"unknown dataset 'nope'", r"known datasets: \['tiny-pneumonia'\]",
           r"cxrkd data import")  # fmt: skip


def test_binary_study_on_a_multilabel_dataset(capsys, run_args, store_maker):
    store_maker(name="tiny-findings", preset="findings")
    args = [*run_args]
    args[args.index("--dataset") + 1] = "tiny-findings"
    fails(capsys, args, r"study 'pneumonia-kd' needs a binary dataset",
           r"'tiny-findings' is multilabel", r"--dataset")  # fmt: skip


def test_storage_that_cannot_be_written(capsys, run_args, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root can write anywhere, but not under a file
    args = [*run_args]
    args[args.index("--storage") + 1] = str(blocker / "runs")
    fails(capsys, args, r"storage '.*a-file/runs' is not writable", r"pass a writable --storage")


def test_existing_run_name_says_resume(capsys, run_args, tmp_path):
    run = tmp_path / "runs" / "R"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    fails(capsys, run_args, r"run 'R' already exists", rf"cxrkd search resume {run}",
           r"another --name")  # fmt: skip


# ---- pre-flight (issue 9, item 6): refused before Ray starts, nothing created -----------


def _nothing_created(home: Path, tmp_path: Path, stores: set[str]) -> None:
    assert not (tmp_path / "runs" / "R").exists(), "a run folder was created"
    assert {p.name for p in (home / "datasets").iterdir()} == stores, "a dataset was imported"


def test_unknown_model_is_refused_with_close_matches_even_untrained(capsys, run_args, home,
                                                                      tmp_path):  # fmt: skip
    # The demo profile has no pretrained weights, so the weights check never saw the name.
    err = fails(capsys, [*run_args, "--set", "model=resnet1800"],
                 r"unknown model 'resnet1800' in cell '\w+'", r"close matches: \[.*'resnet18'",
                 r"--set model=")  # fmt: skip
    assert "cnn_baseline" in err  # cxrkd's own models are listed as valid
    _nothing_created(home, tmp_path, {"tiny-pneumonia"})


def test_custom_models_pass_the_model_check():
    from cxrkd.search.preflight import check_models

    check_models({"cnn_baseline": "baseline_cnn", "resnet18": "x", "vit_tiny_patch16_224": "y"})


@pytest.mark.parametrize(
    "setting", ["lr=inf", "lr=nan", "weight_decay=-inf", "temperature=NaN", "alpha=nan"]
)
def test_non_finite_values_are_refused_with_the_key(capsys, run_args, home, tmp_path, setting):
    key, value = setting.split("=")
    fails(capsys, [*run_args, "--set", setting],
           rf"bad value {key}='{value}': expected a finite number")  # fmt: skip
    _nothing_created(home, tmp_path, {"tiny-pneumonia"})


def test_paper_profile_refuses_the_builtin_synthetic_data(capsys, home, tmp_path):
    storage = str(tmp_path / "runs")
    fails(capsys, ["search", "run", "pneumonia-kd", "--profile", "paper", "--name", "R",
                    "--storage", storage],
           r"profile 'paper' of study 'pneumonia-kd' is meant for real data",
           r"'phantom-pneumonia' is SYNTHETIC", r"cxrkd data import kaggle-pneumonia",
           r"--dataset phantom-pneumonia to run on the phantoms anyway")  # fmt: skip
    assert not (home / "datasets" / "phantom-pneumonia").exists(), "the phantom was imported"
    assert not (tmp_path / "runs").exists()


def test_paper_profile_refuses_an_imported_builtin_phantom_too(capsys, home, tmp_path,
                                                               store_maker):  # fmt: skip
    store_maker(name="phantom-findings", preset="findings")  # as a demo run leaves it
    fails(capsys, ["search", "run", "lowres-kd", "--profile", "paper", "--name", "R",
                    "--storage", str(tmp_path / "runs")],
           r"'phantom-findings' is SYNTHETIC", r"cxrkd data import vindr")  # fmt: skip
    _nothing_created(home, tmp_path, {"phantom-findings"})


def test_paper_profile_takes_synthetic_data_named_with_dataset(tiny_store):
    """Named explicitly, the phantom passes the data check; the tables then say SYNTHETIC
    (the rendered files are checked in the end-to-end run of test_subset.py)."""
    from cxrkd.results.report import caption_of
    from cxrkd.search.study_dataset import open_dataset
    from cxrkd.search.study_options import study_with_options

    study = study_with_options(RunOptions(study="pneumonia-kd", profile="paper"))
    store = open_dataset(study, tiny_store.name)
    assert store.manifest.synthetic
    assert caption_of(study, store.manifest).startswith("SYNTHETIC")


def test_lowres_study_on_a_binary_dataset_names_the_labels_it_needs(capsys, run_args, home,
                                                                     tmp_path):  # fmt: skip
    args = [*run_args]
    args[args.index("pneumonia-kd")] = "lowres-kd"
    fails(capsys, args, r"study 'lowres-kd' needs a multilabel dataset",
           r"several local finding labels \(the MLCT task\) and a global abnormal label",
           r"'tiny-pneumonia' is binary with labels \[", r"cxrkd data import vindr",
           r"--dataset")  # fmt: skip
    _nothing_created(home, tmp_path, {"tiny-pneumonia"})


def test_binary_study_on_a_multilabel_dataset_names_the_labels_it_needs(capsys, run_args,
                                                                       store_maker):  # fmt: skip
    store_maker(name="tiny-findings", preset="findings")
    args = [*run_args]
    args[args.index("--dataset") + 1] = "tiny-findings"
    fails(capsys, args, r"one positive label \(e\.g\. PNEUMONIA\) against normal",
           r"'tiny-findings' is multilabel with labels \[.*\] \(global label",
           r"cxrkd data import kaggle-pneumonia")  # fmt: skip


def test_only_that_matches_no_cell_lists_the_cells(capsys, run_args, home, tmp_path):
    fails(capsys, [*run_args, "--only", "resnet18_kd", "--only", "*tiny*"],
           r"--only \['\*tiny\*'\] matches no cell of study 'pneumonia-kd'",
           r"its cells: \['resnet50_teacher', 'baseline_cnn', 'resnet18_finetuned', "
           r"'resnet18_frozen', 'resnet18_kd'\]")  # fmt: skip
    _nothing_created(home, tmp_path, {"tiny-pneumonia"})


@pytest.mark.parametrize("command", ["resume", "status"])
def test_resume_and_status_of_a_run_that_does_not_exist(capsys, tmp_path, command):
    missing = tmp_path / "runs" / "nope"
    fails(capsys, ["search", command, str(missing)], rf"no run at {missing} \(no run.json\)")
    # A bare name is looked up under the default storage ($CXRKD_HOME/runs).
    fails(capsys, ["search", command, "nope"], r"no run at .*/runs/nope", r"--name")


@pytest.fixture
def made_run(tiny_store, tmp_path) -> Path:
    """A run folder as ``search run`` writes it before its first trial."""
    run = tmp_path / "runs" / "R"
    run.mkdir(parents=True)
    options = {"study": "pneumonia-kd", "profile": "demo", "dataset": tiny_store.name,
               "name": "R", "storage": str(tmp_path / "runs")}  # fmt: skip
    raw = {"options": options, "dataset_fingerprint": tiny_store.fingerprint}
    (run / "run.json").write_text(json.dumps(raw))
    return run


SPOILED_RUNS = {  # how run.json was spoiled -> (new text from the good record, message)
    "not JSON": (lambda raw: "{not json", r"run.json is damaged \(JSONDecodeError"),
    "no options": (
        lambda raw: json.dumps({"dataset_fingerprint": raw["dataset_fingerprint"]}),
        r"run.json is damaged \(KeyError: 'options'\); restore it from a backup",
    ),
    "another version": (
        lambda raw: json.dumps({**raw, "options": {**raw["options"], "warp_speed": 9}}),
        r"options this cxrkd does not know: \['warp_speed'\].*resume it with that version",
    ),
}


@pytest.mark.parametrize("command", [["search", "resume"], ["search", "status"], ["report"]])
@pytest.mark.parametrize("spoiled", SPOILED_RUNS)
def test_a_damaged_run_record_is_named_and_left_as_it_was(capsys, made_run, command, spoiled):
    spoil, pattern = SPOILED_RUNS[spoiled]
    text = spoil(json.loads((made_run / "run.json").read_text()))
    (made_run / "run.json").write_text(text)
    fails(capsys, [*command, str(made_run)], pattern)
    assert (made_run / "run.json").read_text() == text
    assert [p.name for p in made_run.iterdir()] == ["run.json"]


def test_resume_after_the_dataset_changed(capsys, made_run):
    raw = json.loads((made_run / "run.json").read_text())
    (made_run / "run.json").write_text(json.dumps({**raw, "dataset_fingerprint": "f0"}))
    fails(capsys, ["search", "resume", str(made_run)],
           r"dataset 'tiny-pneumonia' changed since the run started \(fingerprint \w+, was f0\)",
           r"re-import the original data or start a new run")  # fmt: skip
    assert [p.name for p in made_run.iterdir()] == ["run.json"]


def test_a_run_of_the_stage_by_stage_layout_is_refused_before_anything_changes(capsys, made_run):
    (made_run / "teacher").mkdir()  # an earlier cxrkd's experiment of its first stage
    (made_run / "teacher" / "tuner.pkl").write_bytes(b"x")
    fails(capsys, ["search", "resume", str(made_run)],
          r"was started by an earlier cxrkd, which ran each stage as its own experiment",
          r"Resume it with the cxrkd that started it, or start a new run")  # fmt: skip
    assert sorted(p.name for p in made_run.iterdir()) == ["run.json", "teacher"]


# ---- a trial whose loss turns NaN ------------------------------------------------------

NAN_STUDY = "nan-probe"


def _nan_probe(profile: Profile) -> Study:
    """One search cell of two fixed configs (one with a learning rate that diverges), then
    the final stage re-trains the cell's choice."""
    base = {**profile.fixed, "method": "cnn_baseline", "model": "cnn_baseline"}
    search = [FixedCell("cnn", ({**base, "lr": 1e-3}, {**base, "lr": 1e6}))]
    return Study(
        name=NAN_STUDY,
        task="binary",
        default_dataset="unused",
        default_import=("phantom", "pneumonia", {}),
        stages=[
            # No ASHA: it could stop the diverging trial after epoch 1, before its loss is NaN.
            Stage("search", "search", search, early_stopping=False),
            Stage("final", "final", final_cells(["cnn"], 1), False),
        ],
        profile=profile,
    )  # fmt: skip


def _nan_tables(study: Study) -> list[TableSpec]:
    rows, metrics = [("cnn", "CNN")], [("test_auc", "AUC")]
    return [TableSpec(rows, metrics, {"cnn": ["lr"]}, title="NaN probe", stem="nan_probe")]


@pytest.mark.slow
def test_a_nan_trial_ends_errored_with_its_reason_and_the_study_goes_on(
    local_ray, tiny_store, tiny, tmp_path, monkeypatch
):
    profile = probe_profile(2)
    monkeypatch.setitem(STUDIES.all(), NAN_STUDY, (_nan_probe, {"demo": profile}))
    monkeypatch.setitem(STUDY_TABLES.all(), NAN_STUDY, _nan_tables)
    run = Path(
        run_study(RunOptions(study=NAN_STUDY, dataset=tiny_store.name, name="nan",
                             storage=str(tmp_path / "runs"), max_concurrent=2))
    )  # fmt: skip
    trials = pd.read_parquet(run / "trials.parquet").set_index(["stage", "config/lr"])
    bad = trials.loc[("search", 1e6)]
    assert bad["status"] == "errored"
    assert re.search(r"training loss became nan in epoch 2 \(lr=1000000.0", bad["error"])
    assert "lower lr or set grad_clip" in bad["error"]
    good = trials.loc[("search", 1e-3)]
    assert good["status"] == "completed" and pd.isna(good["error"])
    # The study went on: the final stage re-trained the finite configuration and tested it.
    final = trials.loc[("final", 1e-3)]
    assert final["status"] == "completed" and final["test_auc"] == final["test_auc"]
    assert (run / "tables" / "nan_probe.md").is_file()
