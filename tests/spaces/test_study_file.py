"""Study files (spaces.study_file): every built-in study under every profile reads back equal,
and bad files are refused naming the key, the place and what is known."""

from __future__ import annotations

import pytest

from cxrkd.spaces.studies import STUDIES, get_study
from cxrkd.spaces.study_file import dump_study_file, load_study_text, parse_toml, study_data
from cxrkd.trainables.errors import CxrkdError

BUILTIN = [(name, p) for name, (_, profiles) in STUDIES.all().items() for p in profiles]


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
@pytest.mark.parametrize(("name", "profile"), BUILTIN)
def test_builtin_study_round_trips(name, profile, fmt):
    study = get_study(name, profile)
    studies, _ = load_study_text(dump_study_file([study], fmt=fmt), f"x.{fmt}")
    assert studies == {profile: study}
    assert hash(studies[profile]) == hash(study)


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_all_profiles_in_one_file(fmt):
    name = "lowres-kd"
    studies = [get_study(name, p) for p in STUDIES.get(name)[1]]
    back, _ = load_study_text(dump_study_file(studies, fmt=fmt), f"x.{fmt}")
    assert list(back.values()) == studies


def test_the_name_chooses_the_format():
    text = dump_study_file([get_study("pneumonia-kd", "demo")], fmt="yaml")
    assert load_study_text(text, "x.YML")[0]["demo"] == get_study("pneumonia-kd", "demo")
    with pytest.raises(CxrkdError, match="x.toml: not valid TOML"):
        load_study_text(text, "x.toml")
    with pytest.raises(CxrkdError, match="unknown study file format 'json'"):
        dump_study_file([get_study("pneumonia-kd", "demo")], fmt="json")


def _pneumonia_data() -> dict:
    return study_data([get_study("pneumonia-kd", "demo")])


def _load(data: dict):
    from cxrkd.spaces.study_file import to_toml

    return load_study_text(to_toml(data), "s.toml")


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda d: d["profiles"]["demo"]["stages"][1]["cells"][2].update(fixedd={}),
         "profiles.demo.stages[1].cells[2].fixedd"),
        (lambda d: d["profiles"]["demo"].update(sampels=3), "profiles.demo.sampels"),
        (lambda d: d["profiles"]["demo"]["stages"][0].update(rol="x"),
         "profiles.demo.stages[0].rol"),
        (lambda d: d.update(nmae="x"), "nmae"),
    ],
)  # fmt: skip
def test_unknown_key_is_named_with_its_place(edit, where):
    data = _pneumonia_data()
    edit(data)
    with pytest.raises(CxrkdError, match="unknown key") as e:
        _load(data)
    assert where in str(e.value) and "known keys" in str(e.value)


def test_unknown_model_is_named_with_close_matches():
    data = _pneumonia_data()
    data["profiles"]["demo"]["stages"][1]["cells"][1]["fixed"]["model"] = "resnett18"
    with pytest.raises(CxrkdError, match="unknown model 'resnett18'.*'resnet18'"):
        _load(data)


def test_reference_to_no_earlier_cell_keeps_the_study_message():
    data = _pneumonia_data()
    final = data["profiles"]["demo"]["stages"][2]["cells"][0]
    final["final_of"] = "nowhere"
    with pytest.raises(CxrkdError, match="which no earlier cell hands on"):
        _load(data)


def test_teacher_reference_to_unknown_cell_is_refused():
    data = _pneumonia_data()
    cells = data["profiles"]["demo"]["stages"][1]["cells"]
    kd = next(c for c in cells if "teacher_path" in c["fixed"])
    assert kd["fixed"]["teacher_path"] == {"teacher_of": "resnet50_teacher"}
    kd["fixed"]["teacher_path"] = {"teacher_of": "resnet51_teacher"}
    with pytest.raises(CxrkdError, match="resnet51_teacher"):
        _load(data)


def test_bad_toml_names_file_line_and_column():
    with pytest.raises(CxrkdError, match=r"s\.toml: not valid TOML: .*line 2, column"):
        parse_toml('name = "x"\ntask = \n', "s.toml")


def test_a_changed_model_reads_back_as_written():
    data = _pneumonia_data()
    cell = data["profiles"]["demo"]["stages"][1]["cells"][1]
    cell["fixed"]["model"] = "resnet34"
    studies, _ = _load(data)
    got = studies["demo"].stages[1].cells[1]
    assert got.key == cell["key"] and got.fixed["model"] == "resnet34"
