"""Study files through the CLI and the driver's glue (search.study_source): `study show`
loads back, tables round-trip, bad files exit 2 with no run folder, per-cell --set, and a
resume reads the run's own copy of the file. A real run of an edited study file (its row
label following the model that ran) is in test_watch_live.py (YAML: the same driver path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrkd.results.study_tables import study_tables
from cxrkd.results.tables_file import tables_data, tables_from_data
from cxrkd.search.cli import main
from cxrkd.search.run_state import RunOptions, write_options
from cxrkd.search.runner import study_of_run
from cxrkd.search.study_options import study_with_options
from cxrkd.search.study_source import keep_copy, read_study_file, with_study_source
from cxrkd.spaces.studies import STUDIES, get_study
from cxrkd.trainables.errors import CxrkdError


@pytest.fixture(autouse=True)
def _forget_file_tables():
    """A loaded file's tables stand for its study's name in the process: not in other tests."""
    yield
    from cxrkd.results.tables_file import _FILE_TABLES

    _FILE_TABLES.clear()


BUILTIN = [(name, p) for name, (_, profiles) in STUDIES.all().items() for p in profiles]


@pytest.mark.parametrize(("name", "profile"), BUILTIN)
def test_tables_round_trip(name, profile):
    specs = study_tables(get_study(name, profile))
    assert specs
    assert tables_from_data(json.loads(json.dumps(tables_data(specs))), "t") == specs


def _show(capsys, tmp_path: Path, name="pneumonia-kd", profile="demo") -> Path:
    assert main(["study", "show", name, "--profile", profile]) == 0
    path = tmp_path / "study.toml"
    path.write_text(capsys.readouterr().out)
    return path


def test_study_show_loads_back_and_runs_the_same_study(capsys, tmp_path):
    path = _show(capsys, tmp_path)
    registered = study_tables(get_study("pneumonia-kd", "demo"))  # before the file's stand in
    from_file = study_with_options(with_study_source(RunOptions(study=str(path))))
    assert from_file == study_with_options(RunOptions(study="pneumonia-kd"))
    assert study_tables(from_file) == registered


def test_study_list(capsys):
    assert main(["study", "list"]) == 0
    assert "pneumonia-kd: profiles demo, paper" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('key = "resnet18_kd"', 'key = "resnet18_kd"\nfixedd = {}', "stages[1].cells[3].fixedd"),
        ('model = "resnet18"', 'model = "resnett18"', "unknown model 'resnett18'"),
        ('stem = "pneumonia_kd"', 'stem = "pneumonia_kd"\nrowz = []', "tables[0].rowz"),
        ('task = "binary"', "task = ", "line 2, column"),
    ],
)
def test_bad_study_file_exits_2_and_writes_nothing(capsys, tmp_path, home, old, new, message):
    path = _show(capsys, tmp_path)
    path.write_text(path.read_text().replace(old, new, 1))
    refused(capsys, path, tmp_path / "runs", message)


def refused(capsys, path: Path, runs: Path, message: str) -> None:
    """``search run`` and ``search plan`` of a bad study file: exit 2 naming the problem,
    and no run folder written."""
    assert main(["search", "run", str(path), "--storage", str(runs)]) == 2
    assert message in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())
    assert main(["search", "plan", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_file_profile_must_exist(capsys, tmp_path):
    path = _show(capsys, tmp_path)
    with pytest.raises(CxrkdError, match=r"no profile 'paper'.*\['demo'\]"):
        read_study_file(str(path), "paper")


def test_per_cell_set_changes_one_cell_and_its_row_label():
    study = study_with_options(
        RunOptions(study="pneumonia-kd", overrides={"resnet18_kd.model": "resnet34"})
    )
    models = {c.key: c.fixed["model"] for c in study.stage("search").cells}
    assert models["resnet18_kd"] == "resnet34" and models["resnet18_finetuned"] == "resnet18"
    labels = dict(study_tables(study)[0].rows)
    assert labels["resnet18_kd"] == "ResNet-34 KD student"
    assert labels["resnet18_finetuned"] == "ResNet-18 fine-tuned"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nope.lr": "0.1"}, "no search cell .* matches 'nope'; its search cells"),
        ({"resnet18_kd.lrr": "0.1"}, "has no field 'lrr'"),
        ({"resnet18_kd.lr": "fast"}, "lr"),
        ({"resnet18_kd.model": "resnett34"}, "Close matches.*resnet34"),
    ],
)
def test_per_cell_set_bad_input(overrides, message):
    with pytest.raises(CxrkdError, match=message):
        study_with_options(RunOptions(study="pneumonia-kd", overrides=overrides))


def test_per_cell_set_is_typed_by_the_cell_config():
    study = study_with_options(
        RunOptions(study="pneumonia-kd", overrides={"resnet18_*.lr": "0.25"})
    )
    lrs = {c.key: c.fixed.get("lr") for c in study.stage("search").cells}
    assert lrs["resnet18_kd"] == 0.25 and lrs["resnet18_frozen"] == 0.25
    assert lrs["baseline_cnn"] is None


def test_resume_reads_the_runs_copy_not_the_users_file(capsys, tmp_path):
    path = _show(capsys, tmp_path)
    options = with_study_source(RunOptions(study=str(path)))
    run = tmp_path / "run"
    run.mkdir()
    options = keep_copy(options, str(run))
    assert options.study_file.endswith("run/study.toml")
    write_options(str(run), options, {"dataset_fingerprint": "x"})
    path.write_text(path.read_text().replace('model = "resnet18"', 'model = "resnet34"'))
    study = study_of_run(str(run))
    assert study == study_with_options(RunOptions(study="pneumonia-kd"))


def test_a_files_tables_are_its_own_and_a_builtin_keeps_its(capsys, tmp_path):
    path = _show(capsys, tmp_path)
    title = "Table 4.1 (extended)"
    path.write_text(path.read_text().replace(title, "My table", 1))
    from_file = study_with_options(with_study_source(RunOptions(study=str(path))))
    assert study_tables(from_file)[0].title.startswith("My table")
    builtin = study_with_options(RunOptions(study="pneumonia-kd"))
    assert study_tables(builtin)[0].title.startswith(title)
