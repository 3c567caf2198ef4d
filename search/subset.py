"""Part of a study's grid: ``cxrkd search run STUDY --only PATTERN``.

:func:`select_cells` is a pure function of a study and glob patterns (no Ray, no I/O): the
cells of the teacher and search stages whose keys match, plus the teachers they distil from
(found through the study's own symbolic references, so no study has to list them twice).
:func:`restrict_study` turns a selection into a smaller study of the same stages: the matched
cells and their teachers are searched, the matched cells alone are re-trained in the final
stage and appear in the tables.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cxrkd.spaces import studies
from cxrkd.spaces.studies import (
    Cell,
    FixedCell,
    ParetoSpec,
    PivotSpec,
    Stage,
    Study,
    StudyState,
    TableSpec,
    front_keys,
)
from cxrkd.trainables.errors import CxrkdError

_REF = "<teacher-of:"


@dataclass
class _TracingState(StudyState):
    """A state before anything ran whose teacher references name the teacher cell."""

    placeholder: bool = True

    def teacher(self, key: str) -> str:
        return f"{_REF}{key}>"


@dataclass(frozen=True)
class Selection:
    """What ``--only`` selected: ``matched`` (cell keys the patterns matched, in study order)
    and ``teachers`` (cells they depend on that no pattern matched)."""

    patterns: tuple[str, ...]
    matched: tuple[str, ...]
    teachers: tuple[str, ...]

    @property
    def searched(self) -> frozenset[str]:
        """Cells of the teacher and search stages that run."""
        return frozenset(self.matched) | frozenset(self.teachers)


def study_cells(study: Study) -> list[Cell]:
    """Every cell of the study's teacher and search stages, in order (the final stage re-runs
    what they chose, under the same keys)."""
    state = _TracingState()
    return [cell for stage in study.stages if stage.role != "final" for cell in stage.cells(state)]


def _teachers_of(cell: Cell) -> set[str]:
    if isinstance(cell, FixedCell):
        values = [v for config in cell.configs for v in config.values()]
    else:
        linked = [v for opts in cell.choices.values() for vs in opts.values() for v in vs.values()]
        values = [*cell.fixed.values(), *linked]
    return {v[len(_REF) : -1] for v in values if isinstance(v, str) and v.startswith(_REF)}


def select_cells(study: Study, patterns: Sequence[str]) -> Selection:
    """The cells whose keys match any of ``patterns`` (``fnmatch`` globs, e.g. ``'*tiny*'``),
    and the teachers they need. A pattern that matches nothing is an error listing the
    study's cells."""
    cells = study_cells(study)
    keys = [c.key for c in cells]
    unmatched = [p for p in patterns if not fnmatch.filter(keys, p)]
    if not patterns or unmatched:
        raise CxrkdError(
            f"--only {unmatched or list(patterns)} matches no cell of study {study.name!r} "
            f"(profile {study.profile.name}); its cells: {keys}. Patterns are globs over "
            "these keys, e.g. --only '*tiny*' (quote them for the shell)"
        )
    matched = [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    by_key = {c.key: c for c in cells}
    needed: set[str] = set()
    todo = list(matched)
    while todo:  # a teacher may itself distil from a teacher
        for teacher in _teachers_of(by_key[todo.pop()]) - needed:
            needed.add(teacher)
            todo.append(teacher)
    teachers = [k for k in keys if k in needed and k not in matched]
    return Selection(tuple(patterns), tuple(matched), tuple(teachers))


@dataclass
class _SubsetState(StudyState):
    """The run's state seen by a restricted stage: cells outside the selection get stand-ins
    for the teachers and choices they will never have (their stage builds them before they
    are dropped)."""

    keep: frozenset[str] = frozenset()
    base: StudyState = field(default_factory=StudyState)  # the state seen (it may trace)

    def teacher(self, key: str) -> str:
        if key in self.keep or self.placeholder:
            return self.base.teacher(key)
        return "<not selected>"

    def chosen(self, key: str) -> dict:
        if key in self.keep or key in self.best:
            return self.base.chosen(key)
        return {}


def _restrict_stage(stage: Stage, keep: Callable[[list[Cell]], list[Cell]], seen) -> Stage:
    def cells(state: StudyState) -> list[Cell]:
        view = _SubsetState(teachers=state.teachers, best=state.best,
                            placeholder=state.placeholder, keep=seen, base=state)  # fmt: skip
        return keep(stage.cells(view))

    return dataclasses.replace(stage, cells=cells)


def final_keys(selection: Selection, keys: Sequence[str]) -> list[str]:
    """The final-stage keys of the matched cells among ``keys``: the cell's own, or the
    Pareto-front keys of a multi-objective cell."""
    present = set(keys)
    out = set(selection.matched)
    for key in selection.matched:
        out |= set(front_keys(key, present))
    return [k for k in keys if k in out]


def restrict_study(study: Study, selection: Selection) -> Study:
    """The study with only the selected cells: matched cells and their teachers in the
    teacher and search stages, matched cells in the final stage and in the tables."""
    searched = selection.searched

    def keep_searched(cells: list[Cell]) -> list[Cell]:
        return [c for c in cells if c.key in searched]

    def keep_final(cells: list[Cell]) -> list[Cell]:
        chosen = set(final_keys(selection, [c.key for c in cells]))
        return [c for c in cells if c.key in chosen]

    stages = [
        _restrict_stage(s, keep_final if s.role == "final" else keep_searched, searched)
        for s in study.stages
    ]
    tables = [t for t in (_restrict_table(t, selection) for t in study.tables) if t is not None]
    return dataclasses.replace(study, stages=stages, tables=tables)


def _in_table(key: str, selection: Selection) -> bool:
    """Whether a table row or cell of ``key`` ran: a final-stage cell that was matched, or
    the registered checkpoint of any teacher that was trained."""
    prefix = getattr(studies, "REGISTERED_PREFIX", None)
    if prefix and key.startswith(prefix):
        return key[len(prefix) :] in selection.searched
    return key in selection.matched


def _restrict_table(spec, selection: Selection):
    """The table's rows of cells that ran (and paired tests between them); None when it has
    none left."""

    def ran(key: str) -> bool:
        return _in_table(key, selection)

    pairs = getattr(spec, "baselines", None)  # KD row -> its no-KD row, for the paired test
    kept = (
        {}
        if pairs is None
        else {"baselines": {a: b for a, b in pairs.items() if ran(a) and ran(b)}}
    )
    if isinstance(spec, TableSpec):
        rows = [(key, name) for key, name in spec.rows if ran(key)]
        hyper = {k: v for k, v in spec.hyperparams.items() if ran(k)}
        return dataclasses.replace(spec, rows=rows, hyperparams=hyper, **kept) if rows else None
    if isinstance(spec, PivotSpec):
        entries = [e for e in spec.entries if ran(e[2])]
        configs = {k: v for k, v in spec.configs.items() if ran(k)}
        if not entries:
            return None
        return dataclasses.replace(spec, entries=entries, configs=configs, **kept)
    if isinstance(spec, ParetoSpec):
        return spec if spec.cell in selection.matched else None
    raise TypeError(f"unknown table spec {type(spec).__name__}")
