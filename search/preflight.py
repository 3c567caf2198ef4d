"""Pre-flight checks of a study's cells, run once by the driver before any trial starts.

Every searchable cell is dry-run: one config drawn from its space must parse, every model name
must be cxrkd's own or timm's, and pretrained weights must be reachable. What a user can get
wrong fails here, with the fix, instead of in thirty trials. (The study's options and dataset
are checked where they are read: :mod:`search.study_options`, :mod:`search.study_dataset`.)
"""

from __future__ import annotations

from cxrkd.search.study_options import apply_overrides
from cxrkd.spaces.cell_space import CellSpace, expand_choices
from cxrkd.spaces.studies import SearchCell, Study, StudyState, TeacherOf, resolve, searched_cells
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.data.store import DatasetStore
from cxrkd.trainables.errors import CxrkdError


def check_models(models: dict[str, str]) -> None:
    """Every model name (``{name: cell key}``) must be one of cxrkd's own or timm's, whether
    or not it is pretrained: a typo would otherwise fail in every trial."""
    import difflib

    import timm

    from cxrkd.trainables.models import MODELS

    for name, cell in sorted(models.items()):
        if name in MODELS or timm.is_model(name):
            continue
        known = MODELS.names() + timm.list_models()
        close = difflib.get_close_matches(name, known, n=6, cutoff=0.6)
        raise CxrkdError(
            f"unknown model {name!r} in cell {cell!r}; close matches: {close or 'none'}; "
            f"cxrkd's own models: {MODELS.names()}; pass a timm name (timm.list_models("
            "'*pattern*') lists them), e.g. --set model=" + (close[0] if close else "resnet18")
        )


def check_cells(study: Study, store: DatasetStore, overrides: dict | None = None) -> None:
    """Dry-run every searchable cell: one config from its space must parse, and pretrained
    weights must be reachable (one clear error, before any trial starts)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    models: set[str] = set()
    names: dict[str, str] = {}  # every model, pretrained or not -> a cell that uses it
    weights_dir = None
    cells = [c for _, c in searched_cells(study) if isinstance(c, SearchCell)]
    for searched in apply_overrides(cells, overrides or {}):
        # No teacher is registered yet: each reference stands in as its own text, a string
        # as the trial's config needs.
        stand_ins = StudyState(teachers={t: str(TeacherOf(t)) for t in searched.teachers})
        (concrete,) = resolve(searched, stand_ins)
        for cell in expand_choices(concrete):  # every size of an open search, etc.
            trial = optuna.create_study().ask()
            cfg = parse_config(CellSpace(cell)(trial))
            names.setdefault(cfg.train.model, cell.key)
            if cfg.train.pretrained:
                models.add(cfg.train.model)
                weights_dir = cfg.train.weights_dir
    check_models(names)
    if models:
        from cxrkd.trainables.weights import check_weights_available

        check_weights_available(sorted(models), weights_dir=weights_dir)
