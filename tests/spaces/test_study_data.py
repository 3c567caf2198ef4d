"""Studies as frozen data (issue 11, item 3): cells hold references, not closures; one resolver
turns them into the configs the closure-built studies made; bad references are refused.

``closure_cells.json`` was recorded from the closure-built studies (commit 4ebd19c) before
they became data: every stage's cells, built from the finished state :func:`finished_state`
makes, for the three studies under both profiles. A KD loss added to the registry changes the
open search's ``kd_approach`` choices, so those are compared with the profile's grid instead.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cxrkd.spaces.lowres_kd import Grid
from cxrkd.spaces.studies import (
    STUDIES,
    FinalCell,
    FixedCell,
    FrozenDict,
    Profile,
    Role,
    SearchCell,
    Stage,
    Study,
    StudyState,
    TeacherOf,
    front_key,
    get_study,
    is_ready,
    kd_stages,
    resolve,
)
from cxrkd.trainables.errors import CxrkdError

SNAPSHOT = json.loads((Path(__file__).parent / "closure_cells.json").read_text())
FRONT = {"lowres-kd-open": 2}  # a multi-objective cell chose a Pareto front of two


def finished_state(study: Study, front: int = 0) -> StudyState:
    """What the teacher and search stages hand on: a URI per teacher cell, and per cell a
    chosen configuration (plus ``front`` Pareto-front configurations) told apart by lr."""
    state = StudyState()
    i = 0
    for stage in study.stages:
        if stage.role == Role.FINAL:
            continue
        for cell in [c for ref in stage.cells for c in resolve(ref, state)]:
            if stage.role == Role.TEACHER:
                state.teachers[cell.key] = f"/reg/{cell.key}"
            fixed = dict(getattr(cell, "fixed", {}) or cell.configs[0])
            lr = 0.001 + i * 1e-5
            state.best[cell.key] = {"method": fixed["method"], "model": fixed.get("model"),
                                    "lr": lr, "epochs": fixed.get("epochs")}  # fmt: skip
            i += 1
            for rank in range(1, front + 1):
                state.best[front_key(cell.key, rank)] = {**state.best[cell.key], "lr": rank}
    return state


def as_json(value):
    """A study value as the snapshot has it: dataclasses as dicts with their type's name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, dict | FrozenDict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value


@pytest.mark.parametrize("key", sorted(SNAPSHOT))
def test_references_resolve_to_the_cells_the_closures_made(key):
    name, profile = key.split("/")
    study = get_study(name, profile)
    state = finished_state(study, FRONT.get(name, 0))
    got = []
    for stage in study.stages:
        cells = [as_json(c) for ref in stage.cells for c in resolve(ref, state)]
        for cell in cells:  # the open search: whatever KD losses its grid names
            approaches = cell.get("choices", {}).pop("kd_approach", None)
            if approaches is not None:
                assert list(approaches) == list(study.profile.grid.approaches)
                cell["choices"]["kd_approach"] = "<grid.approaches>"
        got.append({"name": stage.name, "role": stage.role.value,
                    "early_stopping": stage.early_stopping, "cells": cells})  # fmt: skip
    assert json.loads(json.dumps(got)) == SNAPSHOT[key]
    if name in FRONT:  # the front's configurations, re-trained under their own keys
        final = got[-1]["cells"]
        assert [c["key"] for c in final] == [front_key("open", r) for r in (1, 2)]
        assert [c["configs"][0]["lr"] for c in final] == [1, 2]


def _values(value):
    """Every value inside a study, dataclasses and mappings opened."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _values(getattr(value, f.name))
    elif isinstance(value, dict | FrozenDict):
        for k, v in value.items():
            yield k
            yield from _values(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _values(v)
    else:
        yield value


@pytest.mark.parametrize(
    ("name", "profile"), [(n, p) for n, (_, ps) in sorted(STUDIES.all().items()) for p in ps]
)
def test_a_study_is_frozen_hashable_data(name, profile):
    study = get_study(name, profile)
    assert not [v for v in _values(study) if callable(v)]  # no closures anywhere
    again = get_study(name, profile)
    assert again == study and hash(again) == hash(study) and again is not study
    assert {study: 1}[again] == 1  # usable as a key
    renamed = dataclasses.replace(study, name="renamed")
    assert renamed.stages == study.stages and renamed != study
    fewer = dataclasses.replace(study.profile, samples=1)
    assert fewer.samples == 1 and fewer.fixed == study.profile.fixed
    cell = next(c for s in study.stages for c in s.cells if isinstance(c, SearchCell))
    with pytest.raises(TypeError):
        cell.fixed["lr"] = 1.0  # a frozen mapping
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.stages[0].cells = ()
    assert repr(study).startswith(f"Study(name={name!r}")  # printable as it is


def test_roles_are_an_enum_that_keeps_the_stored_names():
    assert [r.value for r in Role] == ["teacher", "search", "final"]
    assert json.dumps({"role": Role.TEACHER}) == '{"role": "teacher"}'  # records, plan --json
    assert f"{Role.FINAL}" == "final" and Role.SEARCH == "search"
    assert Stage("s", "search", ()).role is Role.SEARCH
    with pytest.raises(CxrkdError, match=r"unknown role 'student'.*\['teacher', 'search'"):
        Stage("s", "student", ())
    with pytest.raises(CxrkdError, match=r"cells must be a tuple of cells.*TeacherOf"):
        Stage("s", Role.SEARCH, lambda state: [])  # the old closure API


def test_what_a_cell_needs_is_an_attribute_of_it():
    pneumonia = get_study("pneumonia-kd", "demo")
    search, final = pneumonia.stage("search"), pneumonia.stage("final")
    assert {c.key: c.teachers for c in search.cells} == {
        "baseline_cnn": (), "resnet18_finetuned": (), "resnet18_frozen": (),
        "resnet18_kd": ("resnet50_teacher",)}  # fmt: skip
    assert all(c.chosen == (c.key,) and isinstance(c, FinalCell) for c in final.cells)
    (kd,) = [c for c in search.cells if c.teachers]
    assert kd.fixed["teacher_path"] == TeacherOf("resnet50_teacher")
    (open_cell,) = get_study("lowres-kd-open", "demo").stage("search").cells
    assert open_cell.teachers == ("teacher_tiny", "teacher_small")  # a linked value each
    state = StudyState(teachers={"teacher_tiny": "/t"})
    assert not is_ready(open_cell, state)  # a size it may choose has no teacher yet
    state.teachers["teacher_small"] = "/s"
    (resolved,) = resolve(open_cell, state)
    assert resolved.choices["model"]["vit_small_patch16_224"]["teacher_path"] == "/s"
    assert resolved.teachers == () and resolved.fixed == open_cell.fixed


def test_an_unresolved_reference_is_refused_with_a_clear_error():
    study = get_study("pneumonia-kd", "demo")
    (kd,) = [c for c in study.stage("search").cells if c.key == "resnet18_kd"]
    with pytest.raises(CxrkdError, match=r"cell 'resnet18_kd' cannot be resolved: it refers "
                                         r"to the teacher of cell 'resnet50_teacher'"):  # fmt: skip
        resolve(kd, StudyState(teachers={"other": "/o"}))
    final = study.stage("final").cells[0]
    with pytest.raises(CxrkdError, match=r"refers to the configuration chosen for cell "
                                         r"'baseline_cnn'.*chosen: \['x'\]"):  # fmt: skip
        resolve(final, StudyState(best={"x": {}}))
    fixed = FixedCell("kd", ({"method": "kd_logit", "teacher_path": TeacherOf("t")},))
    with pytest.raises(CxrkdError, match="the teacher of cell 't'"):
        resolve(fixed, StudyState())
    ((config,),) = [c.configs for c in resolve(fixed, StudyState(teachers={"t": "/t"}))]
    assert config == {"method": "kd_logit", "teacher_path": "/t"}


def _study(search, final=()) -> Study:
    teacher = SearchCell("t", "cnn_baseline", {"method": "cnn_baseline"}, 1)
    profile = get_study("pneumonia-kd", "demo").profile
    stages = kd_stages([teacher], search, final)
    return Study("s", "binary", "d", ("phantom", "pneumonia", {}), stages, profile)


def test_a_reference_to_no_earlier_cell_is_refused_when_the_study_is_made():
    kd = SearchCell("kd", "kd_logit", {"method": "kd_logit", "teacher_path": TeacherOf("t")}, 1)
    assert _study([kd], [FinalCell("kd", of="kd", seeds=2)]).stage("search").cells == (kd,)
    wrong = dataclasses.replace(kd, fixed={**kd.fixed, "teacher_path": TeacherOf("kd0")})
    with pytest.raises(CxrkdError, match=r"cell 'kd' of stage 'search' refers to the teacher "
                                         r"of 'kd0', which no earlier cell hands on"):  # fmt: skip
        _study([wrong])
    student_as_teacher = dataclasses.replace(kd, key="kd2", fixed={**kd.fixed,
                                             "teacher_path": TeacherOf("kd")})  # fmt: skip
    with pytest.raises(CxrkdError, match=r"the teacher of 'kd'.*teacher cells before it: \['t'\]"):
        _study([kd, student_as_teacher])  # kd is a search cell: it registers no teacher
    with pytest.raises(CxrkdError, match=r"refers to the choice of 'nope'"):
        _study([kd], [FinalCell("kd", of="nope", seeds=1)])


def test_profile_and_grid_are_typed_and_checked_when_made():
    demo = get_study("lowres-kd", "demo").profile
    assert isinstance(demo.grid, Grid) and demo.grid.sizes == ("tiny",)
    base = {"name": "p", "fixed": {"img_size": 32}, "samples": 1, "teacher_samples": 1,
            "seeds": 1, "grace_period": 1}  # fmt: skip
    assert Profile(**base).grid is None
    for change, pattern in [
        ({"grid": {"grid": demo.grid}}, r"grid must be a study's grid dataclass .* not dict"),
        ({"fixed": {"img_size": 32, "lrr": 1}}, r"fixed holds \['lrr'\], which are not TrainC"),
        ({"teacher_fixed": {"epoch": 2}}, r"teacher_fixed holds \['epoch'\]"),
        ({"bounds": {"lr": (0.1, 0.01)}}, r"bounds \{'lr': \(0.1, 0.01\)\} are not \(low, high"),
        ({"samples": 0}, r"\{'samples': 0\} \(counts must be whole numbers >= 1"),
        ({"reduction_factor": 1}, r"reduction_factor >= 2"),
        ({"objectives": ("params",)}, r"first objective must be a validation AUROC"),
    ]:
        with pytest.raises(CxrkdError, match=pattern):
            Profile(**{**base, **change})
    for grid, pattern in [
        ({"sizes": ("huge",), "factors": (2,)}, r"unknown ViT size\(s\) \['huge'\]"),
        ({"sizes": ("tiny",), "factors": (1,)}, r"factors must be whole numbers >= 2"),
        ({"sizes": ("tiny",), "factors": (2,), "approaches": ("kd",)}, r"unknown KD approach"),
        ({"sizes": ("tiny",), "factors": (2,), "pairs": (("tiny", "x"),)}, r"grid pairs must"),
    ]:
        with pytest.raises(CxrkdError, match=pattern):
            Grid(**grid)
