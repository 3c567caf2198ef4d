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
    misfits: dict[str, str] = {}  # cell key -> the KD loss a multi-class store cannot take
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
            approach = one_logit_kd(cfg, store.manifest.task)
            if approach is not None:
                misfits.setdefault(searched.key, approach)
    check_task_fit(study, store, misfits, [c.key for c in cells])
    check_models(names)
    if models:
        from cxrkd.trainables.weights import check_weights_available

        check_weights_available(sorted(models), weights_dir=weights_dir)


def one_logit_kd(cfg, task: str) -> str | None:
    """The KD loss of a ``kd_logit``-layout config that compares one logit per image, on a
    multi-class dataset (where only kd_logit's ``MULTICLASS_APPROACHES`` take the C logits and every
    trial would fail with a ConfigError); None when the config fits."""
    if task != "multiclass":
        return None
    from cxrkd.trainables.kd import layout_of  # torch: only once a study is checked
    from cxrkd.trainables.methods.kd_logit import LAYOUT, MULTICLASS_APPROACHES

    if layout_of(cfg.train.method) != LAYOUT:
        return None
    approach = getattr(cfg.method, "kd_approach", None)
    return approach if approach not in MULTICLASS_APPROACHES else None


def check_task_fit(
    study: Study, store: DatasetStore, misfits: dict[str, str], cells: list[str]
) -> None:
    """Refuse the cells whose KD loss cannot learn the store's classes, naming them and the
    fixes: run only the cells that fit, or pin a loss that fits."""
    if not misfits:
        return
    from cxrkd.trainables.methods.kd_logit import MULTICLASS_APPROACHES

    fit = [key for key in cells if key not in misfits]
    named = ", ".join(f"{key} (kd_approach={a})" for key, a in misfits.items())
    only = " ".join(f"--only {key}" for key in fit)
    pin = " or ".join(f"--set kd_approach={a}" for a in MULTICLASS_APPROACHES)
    raise CxrkdError(
        f"study {study.name!r} has cells whose KD loss distils one logit per image, which the "
        f"multi-class dataset {store.manifest.name!r} ({len(store.manifest.labels)} classes) "
        f"cannot give: {named}; every trial of them would fail. Run only the cells that fit "
        f"({only or 'none of this study: pin a loss instead'}), or {pin} (softmax KD over "
        "the classes)"
    )
