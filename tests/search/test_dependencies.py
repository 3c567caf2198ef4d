"""Which cells may start: each one as soon as what it refers to is there, not when the whole
stage before it has ended (no stage barrier); the ready ones are opened resolved."""

from __future__ import annotations

from cxrkd.search.dependencies import study_cells, teacher_gate
from cxrkd.spaces.studies import StudyState, TeacherOf, get_study


def _ready(study, state) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ready in study_cells(study, state, {}).ready:
        out.setdefault(ready.stage.name, []).append(ready.cell.key)
    return out


def test_pneumonia_baselines_start_with_the_teacher_and_kd_waits_for_it():
    study = get_study("pneumonia-kd", "demo")
    cells = study_cells(study, StudyState(), {})
    ready = _ready(study, StudyState())
    # The baselines need nothing chosen: they run beside the teacher, not after it.
    assert ready == {
        "teacher": ["resnet50_teacher"],
        "search": ["baseline_cnn", "resnet18_finetuned", "resnet18_frozen"],
    }
    assert cells.waiting == {"teacher": 0, "search": 1, "final": 5}
    # The teacher registered: the KD cell is ready, and its first trial computes the
    # teacher's outputs alone (its gate).
    state = StudyState(teachers={"resnet50_teacher": "/reg/teachers/abc"})
    (kd,) = [r.cell for r in study_cells(study, state, {}).ready if r.cell.key == "resnet18_kd"]
    assert kd.fixed["teacher_path"] == "/reg/teachers/abc" and kd.teachers == ()
    assert teacher_gate(kd) == "/reg/teachers/abc"
    assert teacher_gate(next(r.cell for r in cells.ready if r.cell.key == "baseline_cnn")) is None
    # One search cell chosen: its final re-training is ready, the others' still wait.
    state.best["baseline_cnn"] = {"method": "cnn_baseline", "model": "cnn_baseline", "lr": 0.01}
    final = [r for r in study_cells(study, state, {}).ready if r.stage.name == "final"]
    assert [r.cell.key for r in final] == ["baseline_cnn"]
    assert [c["seed"] for c in final[0].cell.configs] == [0, 1]
    assert teacher_gate(final[0].cell) is None


def test_lowres_students_wait_only_for_their_own_teacher():
    study = get_study("lowres-kd", "paper")  # three sizes, a teacher each
    teachers = [r.cell.key for r in study_cells(study, StudyState(), {}).ready
                if r.stage.name == "teacher"]  # fmt: skip
    assert len(teachers) >= 2, teachers
    state = StudyState(teachers={teachers[0]: "/reg/t0"})
    ready = study_cells(study, state, {}).ready
    kd = [r.cell for r in ready if r.cell.fixed.get("method") == "kd_vit"]
    assert kd and all(c.fixed["teacher_path"] == "/reg/t0" for c in kd)
    waiting = study_cells(study, state, {}).waiting["search"]
    assert waiting > 0  # the students of the other teachers


def test_a_pinned_teacher_waits_for_nothing_and_a_front_is_several_final_cells():
    study = get_study("pneumonia-kd", "demo")
    # --set teacher_path=... replaces the reference: the KD cell starts with the teacher given.
    ready = study_cells(study, StudyState(), {"teacher_path": "/mine"}).ready
    (kd,) = [r.cell for r in ready if r.cell.key == "resnet18_kd"]
    assert kd.fixed["teacher_path"] == "/mine"
    # The open search's final cell is one cell that waits, then one per front configuration,
    # at consecutive positions after the cells before it.
    study = get_study("lowres-kd-open", "demo")
    (search,) = study.stage("search").cells
    assert TeacherOf("teacher_tiny") in search.choices["model"]["vit_tiny_patch16_224"].values()
    assert study_cells(study, StudyState(), {}).waiting == {"teacher": 0, "search": 1, "final": 1}
    best = {"open": {"lr": 1}, "open-pareto1": {"lr": 1}, "open-pareto2": {"lr": 2}}
    state = StudyState(teachers={"teacher_tiny": "/t", "teacher_small": "/s"}, best=best)
    final = [r for r in study_cells(study, state, {}).ready if r.stage.name == "final"]
    assert [(r.cell.key, r.position) for r in final] == [("open-pareto1", 0), ("open-pareto2", 1)]
    assert [c["lr"] for c in final[1].cell.configs] == [2, 2]  # the demo's two seeds
