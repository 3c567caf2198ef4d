"""Which cells of a study can start now: each one as soon as what it refers to is there.

A study's cells name what they take from earlier cells (:mod:`spaces.study_cells`): a student
cell its teacher cell (``TeacherOf``), a final cell the cell whose choice it re-trains. A cell
is ready once the :class:`~spaces.studies.StudyState` holds all of it, and the driver opens it
resolved against that state: a student cell starts once its own teacher is registered,
whatever the other teachers are doing, and the baselines of a study (no teacher) start at
once. A stage is finished when none of its cells waits and every ready one is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrkd.search.study_options import apply_overrides
from cxrkd.spaces.studies import Cell, Stage, Study, StudyState, is_ready, resolve
from cxrkd.trainables.methods import get_method


@dataclass(frozen=True)
class ReadyCell:
    stage_index: int
    position: int  # in its stage's list: seeds its sampler as a stage-by-stage run did
    stage: Stage
    cell: Cell  # resolved: a SearchCell or a FixedCell of concrete values

    @property
    def order(self) -> tuple[int, int]:
        return self.stage_index, self.position


@dataclass(frozen=True)
class StudyCells:
    ready: list[ReadyCell]
    waiting: dict[str, int]  # stage name -> how many of its cells wait for an earlier choice


def study_cells(study: Study, state: StudyState, overrides: dict) -> StudyCells:
    """The cells ``state`` makes ready, resolved (``--set`` values pinned first, so a pinned
    reference waits for nothing), and how many wait per stage. A final cell of a Pareto front
    is several cells once resolved; a waiting cell holds one position."""
    ready: list[ReadyCell] = []
    waiting: dict[str, int] = {}
    for index, stage in enumerate(study.stages):
        waiting[stage.name] = 0
        position = 0
        for cell in apply_overrides(list(stage.cells), overrides):
            if not is_ready(cell, state):
                waiting[stage.name] += 1
                position += 1
                continue
            for concrete in resolve(cell, state):
                ready.append(ReadyCell(index, position, stage, concrete))
                position += 1
    return StudyCells(ready, waiting)


def teacher_gate(cell: Cell) -> str | None:
    """The teacher whose cached outputs a search cell's first trial computes: the other
    trials of every cell with that teacher wait for it to report (none races it). A final
    cell reads the outputs its search computed, so it has no gate."""
    fixed = getattr(cell, "fixed", None)
    if not fixed or "teacher_path" not in fixed or "method" not in fixed:
        return None
    return fixed["teacher_path"] if get_method(fixed["method"]).needs_teacher else None
