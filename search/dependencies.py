"""Which cells of a study can start now: each one as soon as what it is built from is chosen.

A study's stages build their cells from a :class:`~spaces.studies.StudyState` (a student
cell from its registered teacher, a final cell from its search cell's choice). Built from a
:class:`TracingState`, a cell whose inputs are not there yet carries a *pending* marker
instead of them, so the cells without one are ready: a student cell is ready once its own
teacher is registered, whatever the other teachers are doing, and the baselines of a study
(no teacher) are ready at once. A stage is finished when none of its cells waits and every
ready one is done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cxrkd.search.study_options import apply_overrides
from cxrkd.spaces.studies import Cell, Stage, Study, StudyState
from cxrkd.trainables.methods import get_method

PENDING = "<pending>"  # a value not chosen yet: a teacher's URI, or a key of a chosen config


class TracingState(StudyState):
    """A study state that stands a pending marker in for what is not chosen yet."""

    def teacher(self, key: str) -> str:
        return self.teachers.get(key, f"{PENDING}teacher:{key}")

    def chosen(self, key: str) -> dict:
        return self.best.get(key, {PENDING: key})


def waits(value) -> bool:
    """Whether ``value`` (a cell, or anything in it) holds a pending marker."""
    if isinstance(value, str):
        return value.startswith(PENDING)
    if isinstance(value, dict):
        return any(waits(k) or waits(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(waits(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(waits(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


@dataclass(frozen=True)
class ReadyCell:
    stage_index: int
    position: int  # in its stage's list: seeds its sampler as a stage-by-stage run did
    stage: Stage
    cell: Cell

    @property
    def order(self) -> tuple[int, int]:
        return self.stage_index, self.position


@dataclass(frozen=True)
class StudyCells:
    ready: list[ReadyCell]
    waiting: dict[str, int]  # stage name -> how many of its cells wait for an earlier choice


def study_cells(study: Study, state: StudyState, overrides: dict) -> StudyCells:
    tracing = TracingState(teachers=dict(state.teachers), best=dict(state.best))
    ready: list[ReadyCell] = []
    waiting: dict[str, int] = {}
    for index, stage in enumerate(study.stages):
        cells = apply_overrides(stage.cells(tracing), overrides)
        waiting[stage.name] = 0
        for position, cell in enumerate(cells):
            if waits(cell):
                waiting[stage.name] += 1
            else:
                ready.append(ReadyCell(index, position, stage, cell))
    return StudyCells(ready, waiting)


def teacher_gate(cell: Cell) -> str | None:
    """The teacher whose cached outputs a search cell's first trial computes: the other
    trials of every cell with that teacher wait for it to report (none races it). A final
    cell reads the outputs its search computed, so it has no gate."""
    fixed = getattr(cell, "fixed", None)
    if not fixed or "teacher_path" not in fixed or "method" not in fixed:
        return None
    return fixed["teacher_path"] if get_method(fixed["method"]).needs_teacher else None
