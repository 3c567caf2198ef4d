"""``search plan``'s wall time follows the driver: a cell starts as soon as the cells it needs
are done (its teacher cell, the cell whose choice it re-trains), not when its stage begins."""

from __future__ import annotations

import pytest

from cxrkd.search.plan import build_plan
from cxrkd.search.plan_counts import CellPlan, StagePlan
from cxrkd.search.run_state import RunOptions
from cxrkd.search.schedule import study_makespan


def _cell(key: str, trials: int, needs: tuple[str, ...] = ()) -> CellPlan:
    """``trials`` trials of one 10 s epoch each, no start-up."""
    per_trial = {case: [1] * trials for case in ("best", "typical", "worst")}
    cell = CellPlan(key, "search", {}, 1, {}, [], per_trial=per_trial, needs=needs)
    cell.epoch_s, cell.trial_overhead_s = 10.0, 0.0
    return cell


def test_a_student_starts_when_its_teacher_is_done_and_baselines_start_at_once():
    teacher = StagePlan("teacher", "teacher", None, [_cell("t", 1)])
    search = StagePlan("search", "search", "teacher", [_cell("base", 2), _cell("kd", 1, ("t",))])
    final = StagePlan("final", "final", "search", [_cell("kd", 1, ("t", "kd"))])
    # 2 workers: t and base#1 at 0 s; kd (its teacher done) and base#2 at 10 s; the final kd
    # (its search cell done) at 20 s. Stage by stage it would be 10 + 20 + 10 = 40 s.
    assert study_makespan([teacher, search, final], "worst", 2) == pytest.approx(30.0)
    # The final cell of "kd" waits for the search cell "kd", not for the whole search stage:
    # with a third baseline trial it starts at 20 s beside it (stage by stage: 10 + 20 + 10).
    slow = StagePlan("search", "search", "teacher", [_cell("base", 3), _cell("kd", 1, ("t",))])
    assert study_makespan([teacher, slow, final], "worst", 2) == pytest.approx(30.0)
    # One worker: no overlap is possible, the sum of every trial.
    assert study_makespan([teacher, search, final], "worst", 1) == pytest.approx(50.0)


@pytest.mark.parametrize("study", ["pneumonia-kd", "lowres-kd", "pneumonia-kd-open"])
def test_the_study_wall_is_between_the_ideal_and_stage_barriers(study):
    for workers in (1, 8):
        plan = build_plan(RunOptions(study=study, profile="paper"), workers=workers)
        for case in ("best", "worst"):
            total = plan["totals"][case]
            barriers = sum(s["totals"][case]["wall_hours"] for s in plan["stages"])
            assert total["device_hours"] / workers - 1e-3 <= total["wall_hours"]
            # List scheduling has anomalies (another order can end a little later), hence 2%.
            assert total["wall_hours"] <= 1.02 * barriers + 1e-3
            if workers == 1:  # nothing overlaps on one worker
                assert total["wall_hours"] == pytest.approx(total["device_hours"], abs=2e-3)
    # pneumonia-kd on 8 workers: the baselines overlap the teacher search, the final
    # re-training overlaps the slowest search cells.
    plan = build_plan(RunOptions(study="pneumonia-kd", profile="paper"), workers=8)
    barriers = sum(s["totals"]["best"]["wall_hours"] for s in plan["stages"])
    if study == "pneumonia-kd":
        assert plan["totals"]["best"]["wall_hours"] < 0.95 * barriers


def test_cells_name_what_they_wait_for():
    plan = build_plan(RunOptions(study="pneumonia-kd", profile="demo"))
    needs = {(s["name"], c["key"]): tuple(c["needs"]) for s in plan["stages"] for c in s["cells"]}
    assert needs[("teacher", "resnet50_teacher")] == ()
    assert needs[("search", "baseline_cnn")] == ()
    assert needs[("search", "resnet18_kd")] == ("resnet50_teacher",)
    assert "resnet18_kd" in needs[("final", "resnet18_kd")]
    assert needs[("final", "baseline_cnn")] == ("baseline_cnn",)
    # A teacher pinned with --set is not a cell to wait for.
    pinned = build_plan(
        RunOptions(study="pneumonia-kd", overrides={"teacher_path": "/some/teacher"})
    )
    kd = [c for s in pinned["stages"] for c in s["cells"] if s["name"] == "search"]
    assert {c["key"]: tuple(c["needs"]) for c in kd}["resnet18_kd"] == ()
