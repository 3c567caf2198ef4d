"""YAML study files (spaces.study_yaml): read with a narrowed SafeLoader; YAML's traps
(duplicate keys, 1.1 booleans, aliases, nulls, python tags) are refused naming the line."""

from __future__ import annotations

import pytest
import yaml

from cxrkd.spaces.studies import get_study
from cxrkd.spaces.study_file import dump_study_file, load_study_text, study_data
from cxrkd.spaces.study_yaml import parse_yaml, to_yaml
from cxrkd.trainables.errors import CxrkdError


def _text() -> str:
    return dump_study_file([get_study("pneumonia-kd", "demo")], fmt="yaml")


def test_yaml_text_is_plain_safe_yaml_of_the_same_data():
    data = study_data([get_study("pneumonia-kd", "demo")])
    assert yaml.safe_load(to_yaml(data)) == data
    assert "&" not in to_yaml({"a": (x := {"b": [1]}), "c": x})  # no anchors for shared data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\nb: 2\na: 3\n", r"at line 3, column 1: key 'a' is given twice \(first at line 1\)"),
        ("a: {x: 1, x: 1}\n", "key 'x' is given twice"),
        ("model: no\n", r"no is the boolean False in YAML 1\.1.*quote it \('no'\)"),
        ("a: [On]\n", "On is the boolean True"),
        ("a: &x [1]\nb: *x\n", "anchor &x is not allowed"),
        ("a:\n", r"line 1, column 3: a value is missing \(null\)"),
        ("a: ~\n", "null"),
        ("1: x\n", "key 1 .int. is not a string: quote it"),
        ("a: !!python/object/apply:os.system [echo hi]\n", "could not determine a constructor"),
        ("a: [1, 2\n", "line 2"),
        ("- a\n- b\n", "a mapping .* at the top level, got list"),
        ("", "got NoneType"),
    ],
)
def test_yaml_traps_are_refused_with_the_place(text, message):
    with pytest.raises(CxrkdError, match=message) as e:
        parse_yaml(text, "s.yaml")
    assert str(e.value).startswith("s.yaml: ")


def test_booleans_and_exponent_floats_read_as_toml_would():
    data = parse_yaml("a: true\nb: False\nc: 1e-4\nd: -2E+3\ne: 'no'\nf: 1_000\n", "s.yaml")
    assert data == {"a": True, "b": False, "c": 1e-4, "d": -2e3, "e": "no", "f": 1000}
    assert isinstance(data["c"], float)


def test_a_study_file_with_a_trap_names_the_line():
    text = _text().replace("augment: false", "augment: off", 1)
    line = text.splitlines().index(next(x for x in text.splitlines() if "augment: off" in x))
    with pytest.raises(
        CxrkdError, match=rf"s\.yaml: .* at line {line + 1}, .*off is the boolean False"
    ):
        load_study_text(text, "s.yaml")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  demo:\n", "  demo:\n    sampels: 3\n", "profiles.demo.sampels"),
        ("model: resnet18\n", "model: resnett18\n", "unknown model 'resnett18'"),
        ("name: pneumonia-kd\n", "name: pneumonia-kd\nnmae: x\n", "unknown key(s) nmae"),
    ],
)
def test_yaml_study_is_checked_like_toml(old, new, message):
    text = _text()
    assert old in text
    with pytest.raises(CxrkdError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_study_text(text.replace(old, new, 1), "s.yaml")
