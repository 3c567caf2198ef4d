"""Which comparison tables each study ends in: ``study name -> make(study) -> specs``.

A study (``spaces.studies``) is data the results layer reads, and it cannot name its tables
itself (spaces import nothing of results), so each study's tables are registered here, by the
module of that study's tables (:mod:`results.pneumonia_tables`, :mod:`results.lowres_tables`),
with :func:`register_tables`. :func:`study_tables` makes them for a study as it was run: a
study restricted to part of its grid (``--only``) keeps the rows of the cells it runs.
"""

from __future__ import annotations

from collections.abc import Callable

from cxrkd.results.table_specs import REGISTERED_PREFIX, Spec, restrict_spec
from cxrkd.results.tables_file import file_tables, follow_models
from cxrkd.spaces.studies import Role, Study
from cxrkd.trainables.registry import Registry

TableMaker = Callable[[Study], list[Spec]]
STUDY_TABLES: Registry[TableMaker] = Registry(
    "tables of study",
    (
        "cxrkd.results.pneumonia_tables",
        "cxrkd.results.lowres_tables",
        "cxrkd.results.pneumonia_open_tables",
    ),
    plural="studies with tables",
)


def register_tables(study: str) -> Callable[[TableMaker], TableMaker]:
    """Register ``make(study) -> specs`` as the tables of the study named ``study``."""

    def decorate(make: TableMaker) -> TableMaker:
        return STUDY_TABLES.add(study, make)

    return decorate


def study_tables(study: Study) -> list[Spec]:
    """The tables of ``study`` (none for a study without registered tables), each with the
    rows of the cells the study runs: its final stage's cells, and the registered teachers of
    its teacher stages."""
    specs = file_tables(study.name)  # a study read from a file has the file's tables
    make = STUDY_TABLES.all().get(study.name) if specs is None else lambda _: specs
    if make is None:
        return []
    finals = {c.key for s in study.stages if s.role == Role.FINAL for c in s.cells}
    teachers = {c.key for s in study.stages if s.role == Role.TEACHER for c in s.cells}

    def ran(key: str) -> bool:
        if key.startswith(REGISTERED_PREFIX):
            return key.removeprefix(REGISTERED_PREFIX) in teachers
        return key in finals

    specs = follow_models(make(study), study)  # labels name the model each row trained
    return [t for t in (restrict_spec(spec, ran) for spec in specs) if t is not None]
