"""What a study's comparison tables show: table specifications (rows, pivots, a Pareto front)
read by :mod:`results.report`; each study's are made by :mod:`results.study_tables`.

Specs name final-stage cells by key (plus :func:`registered` teacher checkpoints), so a table
of a study that ran part of its grid (``--only``) keeps the rows of the cells that ran
(:func:`restrict_spec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

REGISTERED_PREFIX = "registered:"


def registered(teacher_cell: str) -> str:
    """A table cell that stands for the registered checkpoint of a teacher cell (the model the
    students distilled from), not for its final-stage re-training on fresh seeds."""
    return f"{REGISTERED_PREFIX}{teacher_cell}"


@dataclass(frozen=True)
class PivotSpec:
    """A grid table: ``entries`` are ``(row labels, column, final cell key, metric)``."""

    title: str
    stem: str
    row_names: tuple[str, ...]
    entries: list[tuple[tuple[str, ...], str, str, str]]
    configs: dict[str, list[str]] = field(default_factory=dict)  # cell -> keys to list
    # KD cell -> its no-KD baseline cell (same size and resolution): the paired test's pair.
    baselines: dict[str, str] = field(default_factory=dict)
    # Each entry's metric is a template "test_auroc_{finding}", expanded at report time into
    # one column per finding of the dataset (the study does not know the dataset's findings).
    per_finding: bool = False
    note: str = ""  # what the caption must say about this table's columns


@dataclass(frozen=True)
class ParetoSpec:
    """The final models of one open search cell (its Pareto front, or its single choice): the
    chosen configuration, the search trial's validation objectives, cost and test AUROCs."""

    title: str
    stem: str
    stage: str  # the search stage of the cell
    cell: str
    objectives: tuple[tuple[str, str], ...]
    configs: list[str]  # config keys to list


@dataclass(frozen=True)
class TableSpec:
    rows: list[tuple[str, str]]  # (final cell key, display name), in order
    metrics: list[tuple[str, str]]  # (trials column, display name)
    hyperparams: dict[str, list[str]]  # row key -> config keys to print
    title: str
    stem: str
    # KD row key -> its no-KD baseline row key: the pair of the paired test on test images.
    baselines: dict[str, str] = field(default_factory=dict)
    # Teacher rows to show twice: re-trained on the final seeds, and as the registered
    # checkpoint the students distilled from (a row `registered(key)` right after it).
    registered_teachers: tuple[str, ...] = ()
    note: str = ""  # what the caption must say about this table's rows


Spec = TableSpec | PivotSpec | ParetoSpec


def table_rows(spec: TableSpec) -> list[tuple[str, str]]:
    """``spec.rows`` with a ``(registered(key), "<name> (distilled from)")`` row after each
    row named in ``spec.registered_teachers``."""
    wanted = set(spec.registered_teachers)
    out: list[tuple[str, str]] = []
    for key, name in spec.rows:
        out.append((key, name))
        if key in wanted:
            out.append((registered(key), f"{name} (distilled from)"))
    return out


def spec_cells(spec: Spec) -> list[str]:
    """The table cells (final cell keys, registered teachers) a row or pivot table shows; a
    Pareto table's final keys come from the run (its front)."""
    if isinstance(spec, TableSpec):
        return [key for key, _ in table_rows(spec)]
    if isinstance(spec, PivotSpec):
        return [cell for _, _, cell, _ in spec.entries]
    return []


def restrict_spec(spec: Spec, ran: Callable[[str], bool]) -> Spec | None:
    """The table's rows of cells that ran (and paired tests between them); None when it has
    none left. ``ran(key)``: whether a final cell, or a registered teacher, is in the run."""
    if isinstance(spec, ParetoSpec):
        return spec if ran(spec.cell) else None
    kept = {"baselines": {a: b for a, b in spec.baselines.items() if ran(a) and ran(b)}}
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
    raise TypeError(f"unknown table spec {type(spec).__name__}")
