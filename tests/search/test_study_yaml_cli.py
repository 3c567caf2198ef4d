"""YAML study files through the CLI and the driver's glue: `study show --format yaml` runs
the same study as the TOML form, a bad YAML file exits 2 with no run folder, and the run keeps
its copy as YAML, which resume reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_study_file_cli import refused

from cxrkd.results.study_tables import study_tables
from cxrkd.search.cli import main
from cxrkd.search.run_state import RunOptions, read_run, write_options
from cxrkd.search.runner import study_of_run
from cxrkd.search.study_options import study_with_options
from cxrkd.search.study_source import (
    builtin_study_text,
    keep_copy,
    read_study_file,
    run_copy,
    with_study_source,
)
from cxrkd.spaces.studies import STUDIES, get_study


@pytest.fixture(autouse=True)
def _forget_file_tables():
    yield
    from cxrkd.results.tables_file import _FILE_TABLES

    _FILE_TABLES.clear()


def _show(capsys, tmp_path: Path, suffix=".yaml", name="pneumonia-kd") -> Path:
    assert main(["study", "show", name, "--profile", "demo", "--format", "yaml"]) == 0
    path = tmp_path / f"study{suffix}"
    path.write_text(capsys.readouterr().out)
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_show_loads_back_and_runs_the_same_study(capsys, tmp_path, suffix):
    path = _show(capsys, tmp_path, suffix)
    assert path.read_text().startswith("name: pneumonia-kd\n")
    builtin = study_with_options(RunOptions(study="pneumonia-kd"))
    registered = study_tables(builtin)  # before the file's tables stand for the study's
    from_file = study_with_options(with_study_source(RunOptions(study=str(path))))
    assert from_file == builtin
    assert study_tables(from_file) == registered


def test_toml_stays_the_default(capsys):
    assert main(["study", "show", "pneumonia-kd", "--profile", "demo"]) == 0
    assert capsys.readouterr().out.startswith('name = "pneumonia-kd"\n')


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("model: resnet18\n", "model: resnett18\n", "unknown model 'resnett18'"),
        ("  demo:\n", "  demo:\n    sampels: 3\n", "profiles.demo.sampels"),
        ("augment: false", "augment: no", "no is the boolean False"),
        ("name: pneumonia-kd\n", "name: pneumonia-kd\nname: other\n", "given twice"),
    ],
)
def test_bad_yaml_file_exits_2_and_writes_nothing(capsys, tmp_path, home, old, new, message):
    path = _show(capsys, tmp_path)
    path.write_text(path.read_text().replace(old, new, 1))
    refused(capsys, path, tmp_path / "runs", message)


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_run_keeps_a_yaml_copy_and_resume_reads_it(capsys, tmp_path, suffix):
    path = _show(capsys, tmp_path, suffix)
    options = with_study_source(RunOptions(study=str(path)))
    run = tmp_path / "run"
    run.mkdir()
    options = keep_copy(options, str(run))
    copy = run / f"study{suffix}"
    assert options.study_file == str(copy) and copy.read_text() == path.read_text()
    write_options(str(run), options, {"dataset_fingerprint": "x"})
    path.write_text(path.read_text().replace("model: resnet18", "model: resnet34"))
    assert study_of_run(str(run)) == study_with_options(RunOptions(study="pneumonia-kd"))
    moved = tmp_path / "moved"
    run.rename(moved)  # the copy is found wherever the run folder is now
    stored = RunOptions(**read_run(str(moved))["options"])
    assert run_copy(stored, str(moved)).study_file == str(moved / f"study{suffix}")


def test_an_extended_profile_runs_with_the_builtin_tables(capsys, tmp_path):
    path = _show(capsys, tmp_path)
    registered = study_tables(get_study("pneumonia-kd", "demo"))
    assert registered
    text = path.read_text().replace("profiles:\n", "profiles:\n  short:\n    extends: demo\n"
                                    "    seeds: 3\n", 1)  # fmt: skip
    path.write_text(text)
    options = with_study_source(RunOptions(study=str(path), profile="short"))
    study = study_with_options(options)
    assert study.profile.name == "short" and study.profile.seeds == 3
    assert study_tables(study) == registered
    assert main(["search", "plan", str(path), "--profile", "short"]) == 0
    assert "short" in capsys.readouterr().out


BUILTIN = [(name, p) for name, (_, profiles) in STUDIES.all().items() for p in profiles]


@pytest.mark.parametrize(("name", "profile"), BUILTIN)
def test_every_builtin_study_and_its_tables_read_back_from_yaml(tmp_path, name, profile):
    path = tmp_path / "s.yaml"
    path.write_text(builtin_study_text(name, profile, fmt="yaml"))
    registered = study_tables(get_study(name, profile))  # before the file's stand for them
    study = read_study_file(str(path), profile)
    assert study == get_study(name, profile)
    assert study_tables(study) == registered
