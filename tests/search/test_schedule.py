"""Free slots take the ready cell on the longest path to the study's end (``search.schedule``),
in the driver's searcher and in ``search plan``'s wall time alike."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from cxrkd.search import plan_throughput
from cxrkd.search.cells import CellScheduler, CellSearcher
from cxrkd.search.plan_counts import CellPlan, StagePlan, plan_counts
from cxrkd.search.run_state import RunOptions
from cxrkd.search.schedule import cell_levels, level_of, levels, study_graph, study_makespan
from cxrkd.search.study_options import study_with_options, typed_overrides
from cxrkd.spaces.studies import FixedCell, SearchCell, StudyState
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

METRIC = "val_auroc"
CNN = {"method": "cnn_baseline", "model": "cnn_baseline", "epochs": 1}


def _cell(key: str, epochs: list[int], needs: tuple[str, ...] = ()) -> CellPlan:
    """Trials of one 10 s epoch each per entry of ``epochs``, no start-up."""
    per_trial = dict.fromkeys(("best", "typical", "worst"), epochs)
    cell = CellPlan(key, "fixed", {}, max(epochs), {}, [], per_trial=per_trial, needs=needs)
    cell.epoch_s, cell.trial_overhead_s = 10.0, 0.0
    return cell


def _study() -> list[StagePlan]:
    """A teacher, a baseline and a student of it, then each re-trained; the teacher's
    re-training (40 s) is the longest trial, and its stage lists it last."""
    return [
        StagePlan("teacher", "teacher", None, [_cell("t", [1])]),
        StagePlan("search", "search", "teacher", [_cell("base", [1]), _cell("kd", [1], ("t",))]),
        StagePlan(
            "final",
            "final",
            "search",
            [_cell("base", [1], ("base",)), _cell("kd", [1], ("t", "kd")), _cell("t", [4], ("t",))],
        ),
    ]


def test_a_long_final_cell_starts_beside_the_chain_not_after_it():
    stages = _study()
    found = levels(stages, lambda c: [e * c.epoch_s for e in c.per_trial["typical"]], 2)
    # Its own span plus the longest of what waits for it: t -> final t (10 + 40 s).
    assert found[(0, "t")] == pytest.approx(50.0)
    assert found[(1, "kd")] == pytest.approx(20.0)
    assert found[(2, "t")] == pytest.approx(40.0)
    # 2 workers. At 10 s the teacher and the baseline are done: the teacher's re-training
    # (level 40) starts at once, beside the student and the two short finals: 10 + 40 s.
    assert study_makespan(stages, "worst", 2) == pytest.approx(50.0)
    # Stage by stage, as the driver handed trials out before: at 10 s the student and the
    # baseline's final (listed before the teacher's) start, the teacher's re-training only at
    # 20 s, and the study ends at 60 s.
    assert study_makespan(stages, "worst", 2, order={}) == pytest.approx(60.0)


def test_a_cells_span_is_its_longest_trial_or_its_trials_over_the_slots():
    stages = [StagePlan("s", "search", None, [_cell("a", [4, 1, 1, 1, 1])])]
    seconds = lambda c: [10.0 * e for e in c.per_trial["typical"]]  # noqa: E731
    assert levels(stages, seconds, 8)[(0, "a")] == pytest.approx(40.0)  # the longest trial
    assert levels(stages, seconds, 1)[(0, "a")] == pytest.approx(80.0)  # all of them, in turn


def test_the_searcher_hands_out_the_highest_level_first_then_earlier_stages_round_robin():
    searcher = CellSearcher(metric=METRIC, mode="max", seed=0)
    searcher.add_cell("search", SearchCell("base", "cnn_baseline", CNN, 2), order=(1, 0),
                      level=20.0)  # fmt: skip
    searcher.add_cell("final", FixedCell("t", ({**CNN, "seed": 0}, {**CNN, "seed": 1})),
                      order=(2, 2), level=40.0)  # fmt: skip
    searcher.add_cell("search", SearchCell("kd", "cnn_baseline", CNN, 2), order=(1, 1),
                      level=20.0)  # fmt: skip
    taken = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [(c[STAGE_KEY], c[CELL_KEY]) for c in taken] == [
        ("final", "t"), ("final", "t"),  # the long re-training first, though a later stage
        ("search", "base"), ("search", "kd"), ("search", "base"), ("search", "kd"),
    ]  # fmt: skip
    assert searcher.suggest("t6") is None  # every budget spent


def test_a_snapshot_of_a_searcher_without_levels_still_ranks_its_cells():
    """A run snapshot before cells had levels: its cells are ranked as equals (stage order)."""
    import pickle

    searcher = CellSearcher(metric=METRIC, mode="max", seed=0)
    del searcher.level
    restored = pickle.loads(pickle.dumps(searcher))  # our own object, made just above
    restored.add_cell("search", SearchCell("b", "cnn_baseline", CNN, 1), order=(1, 0))
    restored.add_cell("teacher", SearchCell("a", "cnn_baseline", CNN, 1), order=(0, 0))
    assert restored.suggest("t0")[CELL_KEY] == "a"


def _demo(**overrides):
    options = RunOptions(study="pneumonia-kd", num_samples=2, overrides=overrides)
    study = study_with_options(options)
    return study, typed_overrides(study, options.overrides)


def test_the_demo_studys_levels_follow_its_longest_chains(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKD_HOME", str(tmp_path))
    study, overrides = _demo(img_size="32", epochs="4", steps_per_epoch="20", batch_size="32")
    found = cell_levels(study, overrides, {"train": 630, "val": 90, "test": 180}, 2)
    rank = sorted(found, key=found.get, reverse=True)
    # The teacher opens everything after it; its re-training on the seeds (a ResNet-50,
    # 2x the FLOPs of a ResNet-18) goes before the ResNet-18 searches; the baseline CNN is
    # the cheapest chain of all.
    assert rank[:2] == [("teacher", "resnet50_teacher"), ("final", "resnet50_teacher")]
    assert rank[-1] == ("final", "baseline_cnn")
    # The student's teacher outputs are cached: it costs what the fine-tuned ResNet-18 does.
    kd, finetuned = found[("search", "resnet18_kd")], found[("search", "resnet18_finetuned")]
    assert kd == pytest.approx(finetuned)
    # A frozen backbone trains at its forward rate: a third of the fine-tuned one's cost.
    assert found[("search", "resnet18_frozen")] < 0.5 * finetuned
    # A Pareto front's re-trained cells take their cell's level.
    assert level_of(found, "final", "resnet18_kd-pareto2") == found[("final", "resnet18_kd")]
    assert level_of(found, "final", "no_such_cell") == 0.0


def test_the_driver_opens_cells_at_their_levels(tmp_path, monkeypatch):
    from cxrkd.search.study_run import StudyDriver

    monkeypatch.setenv("CXRKD_HOME", str(tmp_path))
    study, overrides = _demo()
    found = cell_levels(study, overrides, {"train": 630, "val": 90, "test": 180}, 2)
    searcher = CellSearcher(metric=METRIC, mode="max", seed=0)
    driver = StudyDriver(
        searcher, CellScheduler(metric=METRIC, mode="max", grace_period=1, reduction_factor=2)
    )
    driver.ctx = SimpleNamespace(
        study=study, overrides=overrides, levels=found, run_uri=str(tmp_path / "run")
    )
    driver.state, driver.stages_done, driver.cells_done = StudyState(), [], []
    driver._open()  # at the start: the teacher and the baselines
    assert set(searcher.level) == {
        "teacher/resnet50_teacher", "search/baseline_cnn", "search/resnet18_finetuned",
        "search/resnet18_frozen",
    }  # fmt: skip
    for cid, level in searcher.level.items():
        assert level == found[tuple(cid.split("/"))] > 0
    taken = [searcher.suggest(f"t{i}")[CELL_KEY] for i in range(4)]
    # The teacher's two trials, then the fine-tuned ResNet-18 (stage order would have the
    # baseline CNN, first in its stage and the cheapest chain of the study).
    assert taken == ["resnet50_teacher", "resnet50_teacher", "resnet18_finetuned",
                     "resnet18_finetuned"]  # fmt: skip


def test_a_study_whose_cost_cannot_be_estimated_runs_in_stage_order(monkeypatch, capsys):
    """Counting a model's FLOPs builds it on the driver; a model that cannot be built there
    must not stop a run that only needed it for the order of its trials."""
    from cxrkd.search import runner, schedule

    def cannot(spec):
        raise RuntimeError(f"{spec.model} needs a GPU to build")

    # No FLOPs table (every model is counted by building it), and building fails.
    monkeypatch.setattr(schedule.ThroughputTable, "load", lambda: schedule.ThroughputTable(
        {}, origin="none"))  # fmt: skip
    monkeypatch.setattr(plan_throughput, "count_model_flops", cannot)
    study, overrides = _demo()
    splits = {"train": 630, "val": 90}
    assert runner.study_levels(study, overrides, splits, 2) == {}
    err = capsys.readouterr().err
    assert "stage order" in err and "needs a GPU to build" in err
    # Anything else is a bug in cxrkd, and is not hidden behind the stage order.
    monkeypatch.setattr(schedule, "plan_counts", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        runner.study_levels(study, overrides, splits, 2)


def test_a_gated_student_cell_of_the_highest_level_runs_one_trial_until_it_reports():
    """The first trial of a student computes its teacher's outputs alone; meanwhile the
    other slots serve the lower cells, and the student's trials come first once it reported."""
    searcher = CellSearcher(metric=METRIC, mode="max", seed=0)
    searcher.add_cell("search", SearchCell("kd", "cnn_baseline", CNN, 3), order=(1, 1),
                      gate="teachers/T", level=50.0)  # fmt: skip
    searcher.add_cell("search", SearchCell("base", "cnn_baseline", CNN, 3), order=(1, 0),
                      level=10.0)  # fmt: skip
    first = [(f"t{i}", searcher.suggest(f"t{i}")[CELL_KEY]) for i in range(2)]
    assert [cell for _, cell in first] == ["kd", "base"]
    searcher.on_trial_result("t0", {METRIC: 0.5, "training_iteration": 1})
    assert [searcher.suggest(f"u{i}")[CELL_KEY] for i in range(4)] == ["kd", "kd", "base", "base"]


def test_a_teacher_assistant_waits_for_the_teacher_before_it(tmp_path, monkeypatch):
    """A study file may put a teacher assistant in the teacher stage, distilled from the
    teacher before it: the plan and the levels have it wait for that teacher."""
    monkeypatch.setenv("CXRKD_HOME", str(tmp_path))
    study, overrides = _demo()
    teacher_stage, search_stage = study.stages[0], study.stages[1]
    student = next(c for c in search_stage.cells if c.key == "resnet18_kd")
    assistant = dataclasses.replace(student, key="assistant")
    stages = (dataclasses.replace(teacher_stage, cells=(*teacher_stage.cells, assistant)),
              *study.stages[1:])  # fmt: skip
    study = dataclasses.replace(study, stages=stages)
    plans = plan_counts(study, overrides)
    needs = {c.key: c.needs for c in plans[0].cells}
    assert needs == {"resnet50_teacher": (), "assistant": ("resnet50_teacher",)}
    _, graph = study_graph(plans)
    assert graph[(0, "assistant")] == {(0, "resnet50_teacher")}
    found = cell_levels(study, overrides, {"train": 630, "val": 90, "test": 180}, 2)
    assert found[("teacher", "resnet50_teacher")] > found[("teacher", "assistant")] > 0
