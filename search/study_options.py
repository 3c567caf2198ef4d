"""The study a run's options describe: the named study and profile with ``--num-samples``,
``--set``, ``--objective`` and ``--only`` applied.

``--set`` strings are typed against every config class that has the key (unknown keys and
``method`` are refused, with the valid keys) and pinned in every cell whose method has that
field. ``search run``, ``search resume``, ``search plan`` and the report all build a run's study
here, so they agree on what it is.
"""

from __future__ import annotations

import dataclasses

from cxrkd.search.run_state import RunOptions
from cxrkd.search.subset import restrict_study, select_cells
from cxrkd.spaces.studies import (
    STUDIES,
    FixedCell,
    SearchCell,
    Study,
    get_study,
    parse_objectives,
    searched_cells,
)
from cxrkd.trainables.config import TrainConfig, coerce_field, field_names
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.methods import get_method


def study_with_options(options: RunOptions) -> Study:
    study = get_study(options.study, options.profile)
    profile = study.profile
    if options.num_samples is not None:
        profile = dataclasses.replace(
            profile,
            samples=options.num_samples,
            teacher_samples=min(profile.teacher_samples, options.num_samples),
        )
    overrides = typed_overrides(study, options.overrides)
    fixed = {k: v for k, v in overrides.items() if k in field_names(TrainConfig)}
    if fixed:  # the schedulers and the progress line read epochs etc. from the profile
        # --set wins over a profile's teacher-only values too (apply_overrides pins every cell)
        teacher = {k: v for k, v in profile.teacher_fixed.items() if k not in fixed}
        profile = dataclasses.replace(
            profile, fixed={**profile.fixed, **fixed}, teacher_fixed=teacher
        )
    if options.objectives:
        if not profile.objectives:
            studies = STUDIES.all().items()
            open_studies = [n for n, (_, ps) in studies if any(p.objectives for p in ps.values())]
            raise CxrkdError(
                f"study {study.name!r} has no open search to take --objective; it applies to "
                f"{open_studies}"
            )
        parse_objectives(options.objectives)  # the bad name, before the study is rebuilt
        profile = dataclasses.replace(profile, objectives=tuple(options.objectives))
    # Rebuilt by the study's factory, not `replace(study, profile=...)`: the factory made the
    # stages' cells from the profile (budgets, fixed values).
    factory, _ = STUDIES.get(study.name)
    study = factory(profile)
    if options.only:
        study = restrict_study(study, select_cells(study, options.only))
    return study


def typed_overrides(study: Study, overrides: dict) -> dict:
    """``--set`` strings -> typed values (checked against every config class that has them)."""
    _check_override_keys(study, overrides)
    classes = [TrainConfig] + [get_method(m).config_cls for m in sorted(study_methods(study))]
    out = {}
    for key, value in overrides.items():
        for cls in classes:
            if key in field_names(cls):
                out[key] = coerce_field(cls, key, value)
                break
    return out


def study_methods(study: Study) -> set[str]:
    """Every method the study's search and fixed cells train (the final stage re-runs them)."""
    methods = set()
    for _, cell in searched_cells(study):  # fixed cells may appear in any stage, not only final
        if isinstance(cell, SearchCell | FixedCell):
            configs = cell.configs if isinstance(cell, FixedCell) else [cell.fixed]
            methods |= {config["method"] for config in configs}
    return methods


def _check_override_keys(study: Study, overrides: dict) -> None:
    valid = field_names(TrainConfig)
    for method in study_methods(study):
        valid |= field_names(get_method(method).config_cls)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise CxrkdError(
            f"unknown --set key(s) {unknown} for study {study.name!r}; valid keys: {sorted(valid)}"
        )
    if "method" in overrides:
        raise CxrkdError("--set method=... is not allowed: the study defines the methods")


def apply_overrides(cells: list, overrides: dict) -> list:
    """Pin ``--set`` values in every search cell whose method has that config field (a pinned
    value replaces a reference, e.g. ``--set teacher_path=...``)."""
    out = []
    for cell in cells:
        if isinstance(cell, SearchCell):
            keys = field_names(TrainConfig) | field_names(
                get_method(cell.fixed["method"]).config_cls
            )
            mine = {k: v for k, v in overrides.items() if k in keys}
            out.append(dataclasses.replace(cell, fixed={**cell.fixed, **mine}))
        else:
            out.append(cell)  # the final stage re-runs chosen configs as they are
    return out
