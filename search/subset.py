"""Part of a study's grid: ``cxrkd search run STUDY --only PATTERN``.

:func:`select_cells` is a pure function of a study and glob patterns (no Ray, no I/O): the
cells of the teacher and search stages whose keys match, plus the teachers they distil from
(each cell names them: ``cell.teachers``, so no study has to list them twice).
:func:`restrict_study` turns a selection into a smaller study of the same stages: the matched
cells and their teachers are searched, the matched cells alone are re-trained in the final
stage, and the tables (``results.study_tables``) keep their rows.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from cxrkd.spaces.studies import Cell, FinalCell, Role, Study, searched_cells
from cxrkd.trainables.errors import CxrkdError


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
    return [cell for _, cell in searched_cells(study)]


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
        for teacher in set(by_key[todo.pop()].teachers) - needed:
            needed.add(teacher)
            todo.append(teacher)
    teachers = [k for k in keys if k in needed and k not in matched]
    return Selection(tuple(patterns), tuple(matched), tuple(teachers))


def restrict_study(study: Study, selection: Selection) -> Study:
    """The study with only the selected cells: matched cells and their teachers in the
    teacher and search stages, the re-training of matched cells in the final stage."""

    def kept(cell: Cell, final: bool) -> bool:
        if not final:
            return cell.key in selection.searched
        return (cell.of if isinstance(cell, FinalCell) else cell.key) in selection.matched

    stages = tuple(
        dataclasses.replace(s, cells=tuple(c for c in s.cells if kept(c, s.role == Role.FINAL)))
        for s in study.stages
    )
    return dataclasses.replace(study, stages=stages)
