"""A study file's profile that extends a built-in profile (spaces.study_templates): the
built-in study's builder expands it again, so a changed field reaches every cell."""

from __future__ import annotations

import dataclasses

import pytest

from cxrkd.spaces.studies import STUDIES, FinalCell, SearchCell, get_study
from cxrkd.spaces.study_file import load_study_text
from cxrkd.trainables.errors import CxrkdError

HEAD = """name = "pneumonia-kd"
task = "binary"
default_dataset = "phantom-pneumonia"
default_import = ["phantom", "pneumonia", {}]
"""


def _load(profile: str, fmt: str = "toml"):
    if fmt == "yaml":
        import tomllib

        from cxrkd.spaces.study_yaml import to_yaml

        return load_study_text(to_yaml(tomllib.loads(HEAD + profile)), "s.yaml")[0]
    return load_study_text(HEAD + profile, "s.toml")[0]


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_extends_changes_every_cell(fmt):
    studies = _load(
        '[profiles.short]\nextends = "demo"\nseeds = 3\nsamples = 1\n'
        "fixed = { epochs = 2, img_size = 16 }\nteacher_fixed = { epochs = 3 }\n",
        fmt,
    )
    _, profiles = STUDIES.get("pneumonia-kd")
    demo = profiles["demo"]
    factory, _ = STUDIES.get("pneumonia-kd")
    expected = factory(dataclasses.replace(
        demo, name="short", seeds=3, samples=1,
        fixed={**demo.fixed, "epochs": 2, "img_size": 16},
        teacher_fixed={**demo.teacher_fixed, "epochs": 3},
    ))  # fmt: skip
    assert studies == {"short": expected}
    study = studies["short"]
    assert study.profile.fixed["batch_size"] == demo.fixed["batch_size"]  # merged, not replaced
    cells = [c for s in study.stages for c in s.cells]
    searched = [c for c in cells if isinstance(c, SearchCell)]
    teachers = {c.key for c in study.stage("teacher").cells}
    assert all(c.fixed["img_size"] == 16 for c in searched)
    assert all(c.fixed["epochs"] == (3 if c.key in teachers else 2) for c in searched)
    assert all(c.seeds == 3 for c in cells if isinstance(c, FinalCell))
    assert study != get_study("pneumonia-kd", "demo")


def test_an_extended_profile_written_out_reads_back_equal():
    from cxrkd.spaces.study_file import dump_study_file

    study = _load('[profiles.short]\nextends = "paper"\nseeds = 5\n')["short"]
    assert load_study_text(dump_study_file([study]), "x.toml")[0] == {"short": study}


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ('extends = "papr"', r"has no profile 'papr'; its profiles: \['demo', 'paper'\]"),
        ('extends = "demo"\nsampels = 2', r"unknown key\(s\) profiles.p.sampels"),
        ('extends = "demo"\nseeds = 0', "counts must be whole numbers"),
        ('extends = "demo"\nfixed = { epoch = 2 }', "epoch"),
    ],
)
def test_bad_extends_is_refused(profile, message):
    with pytest.raises(CxrkdError, match=message):
        _load(f"[profiles.p]\n{profile}\n")


def test_extends_with_stages_or_of_a_non_builtin_study_is_refused():
    with pytest.raises(CxrkdError, match="drop its stages"):
        _load('[profiles.p]\nextends = "demo"\nstages = [{ name = "x" }]\n')
    with pytest.raises(CxrkdError, match="'mine' is not a built-in study"):
        load_study_text(HEAD.replace("pneumonia-kd", "mine") + '[profiles.p]\nextends = "demo"\n',
                        "s.toml")  # fmt: skip
    with pytest.raises(CxrkdError, match=r"\['task'\] differ"):
        load_study_text(HEAD.replace("binary", "multilabel") + '[profiles.p]\nextends = "demo"\n',
                        "s.toml")  # fmt: skip
