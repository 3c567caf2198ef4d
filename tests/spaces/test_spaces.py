"""Search spaces and studies: one name per method in both registries, and every config a
space or a study proposes is one the trial accepts (STYLE.md 1, 5, 11)."""

from __future__ import annotations

import optuna
import pytest

from cxrkd.spaces import get_space, load_spaces
from cxrkd.spaces.cell_space import CellSpace
from cxrkd.spaces.studies import (
    STUDIES,
    FixedCell,
    Role,
    SearchCell,
    StudyState,
    get_study,
    resolve,
)
from cxrkd.trainables.config import field_names, parse_config
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.methods import load_methods

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACES = sorted(load_spaces())
PROFILES = ["demo", "paper"]
STUDY_PROFILES = [(name, p) for name, (_, profiles) in STUDIES.all().items() for p in profiles]
SAMPLES = 6  # random draws per space: enough to visit every categorical choice often


def sampled_trials(n: int = SAMPLES, seed: int = 0):
    """Real optuna trials from an in-memory study (random sampler: spread over the space)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [study.ask() for _ in range(n)]


def test_every_method_has_a_space_of_the_same_name_and_vice_versa():
    assert set(load_methods()) == set(load_spaces())
    assert SPACES  # an empty registry would pass the line above


@pytest.mark.parametrize("name", SPACES)
def test_space_suggests_only_config_fields_under_their_own_names(name):
    method = load_methods()[name]
    fields = field_names(method.config_cls) | field_names(parse_config({"method": name}).train)
    for trial in sampled_trials():
        suggested = get_space(name)(trial) or {}
        assert suggested, f"space {name!r} searched nothing"
        # Parameter names equal config fields, and the config holds what Optuna recorded.
        assert suggested == trial.params
        assert set(suggested) <= fields


@pytest.mark.parametrize("name", SPACES)
def test_space_suggestions_parse_for_their_method(name):
    seen = []
    for trial in sampled_trials():
        suggested = get_space(name)(trial)
        cfg = parse_config({"method": name, **suggested}).to_flat()
        assert {k: cfg[k] for k in suggested} == suggested  # nothing dropped or changed
        seen.append(suggested)
    assert len({tuple(sorted(s.items())) for s in seen}) == SAMPLES  # the draws really vary


def test_space_is_a_pure_function_of_the_trial():
    for name in SPACES:
        trial = sampled_trials(1)[0]
        first = get_space(name)(trial)
        fixed = optuna.trial.FixedTrial(first)
        assert get_space(name)(fixed) == first == get_space(name)(fixed)


def test_unknown_space_names_the_close_match():
    with pytest.raises(CxrkdError, match=r"unknown space 'kd_logits' \(did you mean kd_logit"):
        get_space("kd_logits")


def teacher_uri(key: str) -> str:
    return f"/runs/r1/teachers/{key}"


def stage_cells(stage, state: StudyState) -> list:
    """The stage's cells resolved against ``state`` (what the driver opens)."""
    return [cell for ref in stage.cells for cell in resolve(ref, state)]


def finished_state(study) -> StudyState:
    """The state the teacher and search stages leave: a registered teacher per teacher cell,
    and a chosen configuration (the cell's fixed values + a sampled one) per search cell."""
    state = StudyState()
    for stage in study.stages:
        if stage.role == Role.FINAL:
            continue
        for cell in stage_cells(stage, state):
            if stage.role == Role.TEACHER:
                state.teachers[cell.key] = teacher_uri(cell.key)
            if isinstance(cell, SearchCell):
                state.best[cell.key] = CellSpace(cell)(sampled_trials(1)[0])
    return state


@pytest.mark.parametrize(("name", "profile"), STUDY_PROFILES)
def test_every_study_builds_and_every_cell_config_parses(name, profile):
    study = get_study(name, profile)
    assert study.profile.name == profile and profile in study.profile.banner
    assert [s.role for s in study.stages][-1] == "final"
    state = finished_state(study)
    assert state.teachers or not any(s.role == "teacher" for s in study.stages)
    for stage in study.stages:
        cells = stage_cells(stage, state)
        assert cells, f"stage {stage.name!r} has no cells"
        keys = [cell.key for cell in cells]
        assert len(keys) == len(set(keys)), keys  # a cell key names one Optuna study
        for cell in cells:
            if isinstance(cell, SearchCell):
                assert cell.space == cell.fixed["method"]  # the space of the cell's method
                assert cell.num_samples >= 1
                configs = []
                for trial in sampled_trials(3):
                    flat = CellSpace(cell)(trial)
                    # Fixed values win over (and are never suggested by) the space.
                    assert {k: flat[k] for k in cell.fixed} == cell.fixed
                    assert not set(cell.fixed) & set(trial.params)
                    configs.append(flat)
            else:
                assert isinstance(cell, FixedCell) and stage.role == "final"
                configs = list(cell.configs)
                seeds = [parse_config(c).train.seed for c in configs]
                assert seeds == list(range(study.profile.seeds))
                assert all(parse_config(c).train.evaluate_test for c in configs)
            for flat in configs:
                cfg = parse_config(flat)
                assert cfg.train.img_size == study.profile.fixed["img_size"]
                assert study.task in load_methods()[cfg.train.method].tasks
                if hasattr(cfg.method, "teacher_path"):  # a student of a registered teacher
                    assert cfg.method.teacher_path in state.teachers.values()


@pytest.mark.parametrize("profile", PROFILES)
def test_pneumonia_kd_final_stage_retrains_every_table_row(profile):
    from cxrkd.results.study_tables import study_tables

    study = get_study("pneumonia-kd", profile)
    assert [s.role for s in study.stages] == ["teacher", "search", "final"]
    final = stage_cells(study.stages[-1], finished_state(study))
    (table,) = study_tables(study)
    assert [cell.key for cell in final] == [key for key, _ in table.rows]


@pytest.mark.parametrize("profile", PROFILES)
def test_pneumonia_kd_table_names_real_cells_and_config_fields(profile):
    from cxrkd.results.study_tables import study_tables

    study = get_study("pneumonia-kd", profile)
    (table,) = study_tables(study)
    cells = {c.key: c for s in study.stages[:2] for c in s.cells}
    for row, _ in table.rows:
        method = cells[row].fixed["method"]
        fields = field_names(load_methods()[method].config_cls) | field_names(
            parse_config({"method": method}).train
        )
        assert set(table.hyperparams[row]) <= fields, row


def test_kd_cell_carries_the_registered_teacher():
    study = get_study("pneumonia-kd", "demo")
    uri = "/runs/r1/teachers/0123456789abcdef0123"
    (kd,) = [
        c
        for c in stage_cells(study.stages[1], StudyState(teachers={"resnet50_teacher": uri}))
        if c.space == "kd_logit"
    ]
    assert parse_config(CellSpace(kd)(sampled_trials(1)[0])).method.teacher_path == uri


def test_pinned_parameters_are_not_searched():
    cell = SearchCell("c", "kd_logit", {"method": "kd_logit", "lr": 0.01, "alpha": 0.3}, 1)
    trial = sampled_trials(1)[0]
    flat = CellSpace(cell)(trial)
    assert flat["lr"] == 0.01 and flat["alpha"] == 0.3
    assert "lr" not in trial.params and "alpha" not in trial.params
    assert "temperature" in trial.params  # the rest is still searched


def test_unknown_study_and_profile_are_refused():
    with pytest.raises(CxrkdError, match="known studies"):
        get_study("pneumonia", "demo")
    with pytest.raises(CxrkdError, match=r"unknown profile 'fast'.*\['demo', 'paper'\]"):
        get_study("pneumonia-kd", "fast")


def test_demo_teachers_train_longer_than_students_unless_set_says_otherwise():
    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.study_options import apply_overrides, study_with_options

    study = get_study("lowres-kd", "demo")
    (teacher,) = study.stages[0].cells
    student = study.stages[1].cells[0]
    assert (teacher.fixed["epochs"], teacher.fixed["steps_per_epoch"]) == (6, 50)
    assert (student.fixed["epochs"], student.fixed["steps_per_epoch"]) == (4, 20)
    assert "4 epochs of 20 steps (teachers 6 epochs of 50 steps)" in study.profile.banner
    # --set epochs pins every cell, teachers included, and the caption says so.
    options = RunOptions(study="lowres-kd", profile="demo", overrides={"epochs": "2"})
    pinned = study_with_options(options)
    (teacher,) = apply_overrides(list(pinned.stages[0].cells), {"epochs": 2})
    assert (teacher.fixed["epochs"], teacher.fixed["steps_per_epoch"]) == (2, 50)
    assert "2 epochs of 20 steps (teachers 2 epochs of 50 steps)" in pinned.profile.banner


def _lowres_cells(profile: str, img_size: int | None = None) -> dict[str, dict]:
    import dataclasses

    import cxrkd.spaces.lowres_kd as lowres

    prof = lowres.PROFILES[profile]
    if img_size is not None:
        prof = dataclasses.replace(prof, fixed={**prof.fixed, "img_size": img_size})
    study = lowres.lowres_kd(prof)
    state = StudyState(teachers={k: f"/t/{k}" for k in ("teacher_tiny", "teacher_small",
                                                          "teacher_base")})  # fmt: skip
    search = next(s for s in study.stages if s.role == Role.SEARCH)
    return {c.key: c.fixed for c in stage_cells(search, state)}


def test_lowres_resolutions_follow_the_input_size_at_the_papers_ratios():
    paper = _lowres_cells("paper")
    assert {c["low_res"] for c in paper.values()} == {112, 56, 28}  # the paper's 224 px
    assert "kd_base_28px_mlcak" in paper and paper["kd_base_28px_mlcak"]["low_res"] == 28
    small = _lowres_cells("paper", img_size=32)  # a rehearsal with `--set img_size=32`
    assert {c["low_res"] for c in small.values()} == {16, 8, 4}
    assert "base_tiny_4px" in small and all(c["img_size"] == 32 for c in small.values())
    assert {c["low_res"] for c in _lowres_cells("demo").values()} == {32, 16, 8}
    with pytest.raises(CxrkdError, match="too small for low-resolution factors"):
        _lowres_cells("paper", img_size=4)
