"""A teacher trial that fails is retried; students never start against a missing teacher.

A two-stage test study (a cnn teacher, then a ``kd_logit`` student of it) on a private Ray:
(a) the teacher's worker process is SIGKILLed after its first epoch (as an OOM-kill or a
lost node would): Tune retries it from that epoch's checkpoint and the study completes with
it; (b) every teacher trial diverges: the study stops with an error naming the teacher cell
and the fix, before any student trial starts, and a resume stops the same way.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from probes import probe_profile
from trial_spy import Spy, install

from cxrkd.results.frames import load_records
from cxrkd.search.run_state import RunOptions
from cxrkd.search.runner import resume_study, run_study
from cxrkd.spaces.studies import STUDIES, FixedCell, Profile, Stage, Study, TeacherOf
from cxrkd.trainables.errors import CxrkdError

STUDY = "teacher-probe"
EPOCHS = 3
PROFILE = probe_profile(EPOCHS)


def _study_factory(teacher_lr: float):
    def factory(profile: Profile) -> Study:
        base = {**profile.fixed, "model": "cnn_baseline"}
        teachers = [FixedCell("cnn_teacher", ({**base, "method": "cnn_baseline",
                                               "lr": teacher_lr},))]  # fmt: skip
        kd = {**base, "method": "kd_logit", "teacher_path": TeacherOf("cnn_teacher")}
        students = [FixedCell("cnn_kd", (kd,))]

        return Study(
            name=STUDY,
            task="binary",
            default_dataset="unused",
            default_import=("phantom", "pneumonia", {}),
            stages=[
                Stage("teacher", "teacher", teachers, early_stopping=False),
                Stage("search", "search", students, early_stopping=False),
            ],
            profile=profile,
        )

    return factory


def _run(monkeypatch, store, tmp_path, *, teacher_lr: float) -> RunOptions:
    monkeypatch.setitem(STUDIES.all(), STUDY, (_study_factory(teacher_lr), {"demo": PROFILE}))
    return RunOptions(study=STUDY, dataset=store.name, name="R", storage=str(tmp_path / "runs"),
                      max_concurrent=1)  # fmt: skip


@pytest.mark.slow
def test_a_teacher_whose_worker_dies_is_retried_from_its_checkpoint(
    node_tmp, local_ray, tiny_store, tmp_path, monkeypatch
):
    killed: list[tuple[str, int]] = []

    def kill_first_teacher_attempt(stage: str, trial) -> None:
        if stage == "teacher" and not killed:
            pid = int(trial.last_result["pid"])
            killed.append((trial.trial_id, pid))
            os.kill(pid, signal.SIGKILL)  # the trial's actor, a process of our private Ray

    spy = install(monkeypatch, Spy(on_saved=kill_first_teacher_attempt))
    run = Path(run_study(_run(monkeypatch, tiny_store, tmp_path, teacher_lr=1e-3)))

    assert len(killed) == 1
    trial_id, pid = killed[0]
    # Epoch 1 was reported once, by the killed process; the retry went on from its
    # checkpoint in a new process (a restart from scratch would report epoch 1 again).
    assert spy.epochs_of(trial_id) == list(range(1, EPOCHS + 1))
    assert [r[3] == pid for r in spy.rows(trial_id)] == [True] + [False] * (EPOCHS - 1)

    trials = pd.read_parquet(run / "trials.parquet").set_index("stage")
    teacher, student = trials.loc["teacher"], trials.loc["search"]
    assert teacher["trial_id"] == trial_id and teacher["status"] == "completed"
    assert teacher["epoch"] == EPOCHS
    state = json.loads((run / "state.json").read_text())
    assert state["done"] == ["teacher", "search"]
    registered = state["teachers"]["cnn_teacher"]
    assert Path(registered, "record.json").is_file()
    # The student trained against the retried teacher, to the end.
    assert student["status"] == "completed" and student["epoch"] == EPOCHS
    assert student["config/teacher_path"] == registered
    epochs = pd.read_parquet(run / "epochs.parquet")
    assert epochs.groupby("trial_id")["epoch"].apply(list).to_dict() == {
        trial_id: [1, 2, 3],
        student["trial_id"]: [1, 2, 3],
    }


@pytest.mark.slow
def test_when_every_teacher_trial_fails_no_student_starts_and_the_error_says_why(
    node_tmp, local_ray, tiny_store, tmp_path, monkeypatch
):
    spy = install(monkeypatch, Spy())
    options = _run(monkeypatch, tiny_store, tmp_path, teacher_lr=1e6)  # the loss turns NaN
    with pytest.raises(CxrkdError) as failed:
        run_study(options)
    run = tmp_path / "runs" / "R"
    message = str(failed.value)
    for part in [
        "stage 'teacher'",
        "'cnn_teacher'",
        "no student trial was started",
        "training loss became nan",  # the trials' own reason
        f"cxrkd search status {run}",
        "start a new run",
    ]:
        assert part in message, (part, message)

    def nothing_of_the_students() -> None:
        assert {r[0] for r in spy.results} == {"teacher"}
        assert sorted(
            str(p.parent.relative_to(run / "records")) for p in (run / "records").rglob("*")
            if p.is_file()
        ) == ["epochs/teacher--cnn_teacher", "trials/teacher--cnn_teacher"]  # fmt: skip
        state = json.loads((run / "state.json").read_text())
        assert (state["done"], state["cells_done"], state["teachers"]) == ([], [], {})

    nothing_of_the_students()
    # What the teacher did is kept, with its reason (for `cxrkd search status`).
    teacher, epochs = load_records(str(run))
    assert teacher["status"].tolist() == ["errored"]
    assert "training loss became nan" in teacher["error"].iloc[0]
    assert len(epochs) >= 1

    # A resume does not start students against a missing teacher either.
    with pytest.raises(CxrkdError, match="no student trial was started"):
        resume_study(str(run))
    nothing_of_the_students()
