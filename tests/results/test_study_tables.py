"""Each study's tables live with results (``results.study_tables``) and read the study as data:
every built-in study has them, they name only cells the study runs, and making them imports
no search code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cxrkd.results.study_tables import STUDY_TABLES, study_tables
from cxrkd.results.table_specs import REGISTERED_PREFIX, ParetoSpec, spec_cells
from cxrkd.spaces.studies import STUDIES, Role, get_study

STUDY_PROFILES = [(n, p) for n, (_, ps) in sorted(STUDIES.all().items()) for p in ps]


def test_every_study_has_its_tables_registered():
    assert set(STUDY_TABLES.all()) == set(STUDIES.all())


@pytest.mark.parametrize(("name", "profile"), STUDY_PROFILES)
def test_tables_name_only_cells_the_study_runs(name, profile):
    study = get_study(name, profile)
    made = STUDY_TABLES.get(name)(study)
    assert made and study_tables(study) == made  # nothing to drop from a whole study
    finals = {c.key for s in study.stages if s.role == Role.FINAL for c in s.cells}
    teachers = {c.key for s in study.stages if s.role == Role.TEACHER for c in s.cells}
    for spec in made:
        for cell in spec_cells(spec) + ([spec.cell] if isinstance(spec, ParetoSpec) else []):
            if cell.startswith(REGISTERED_PREFIX):
                assert cell.removeprefix(REGISTERED_PREFIX) in teachers, (spec.stem, cell)
            else:
                assert cell in finals, (spec.stem, cell)


def test_a_study_without_registered_tables_has_none(monkeypatch):
    study = get_study("pneumonia-kd", "demo")
    monkeypatch.delitem(STUDY_TABLES.all(), "pneumonia-kd")
    assert study_tables(study) == []


def test_results_read_a_study_without_importing_search():
    code = (
        "import json, sys\n"
        "from cxrkd.results.report import write_report\n"
        "from cxrkd.results.optuna_export import study_distributions\n"
        "from cxrkd.results.study_tables import study_tables\n"
        "from cxrkd.spaces.studies import get_study\n"
        "s = get_study('lowres-kd-open', 'demo')\n"
        "tables = study_tables(s) + study_tables(get_study('lowres-kd', 'demo'))\n"
        "dists = study_distributions(s)\n"
        "print(json.dumps([len(tables), len(dists),"
        " sorted(m for m in sys.modules if m.startswith('cxrkd.search'))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tables, dists, search = json.loads(out.stdout.strip().splitlines()[-1])
    assert (tables, dists, search) == (4, 3, [])  # 1 + 3 tables; 2 teachers + the open cell
