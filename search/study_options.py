"""The study a run's options describe: the named study and profile with ``--num-samples``,
``--set``, ``--objective`` and ``--only`` applied.

``--set`` strings are typed against every config class that has the key (unknown keys and
``method`` are refused, with the valid keys) and pinned in every cell whose method has that
field. ``--set CELL.key=value`` (``CELL`` an exact key or a glob, as ``--only`` takes) pins the
value in the matching search cells only, typed by their config class; it is written into the
study's cells, so the plan, the run, the tables' row labels and the report see it. The study
is a built-in one (rebuilt by its factory from the changed profile) or a study file's
(:mod:`search.study_source`), whose cells are changed in place. ``search run``, ``search
resume``, ``search plan`` and the report all build a run's study here, so they agree on it.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from cxrkd.search.run_state import RunOptions
from cxrkd.search.study_source import source_study
from cxrkd.search.subset import restrict_study, select_cells
from cxrkd.spaces.studies import (
    STUDIES,
    FixedCell,
    Role,
    SearchCell,
    Stage,
    Study,
    parse_objectives,
    searched_cells,
)
from cxrkd.trainables.config import TrainConfig, coerce_field, field_names
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.methods import get_method


def study_with_options(options: RunOptions) -> Study:
    study = source_study(options)
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
        if options.study_file is not None:
            raise CxrkdError(
                f"--objective does not apply to a study file ({options.study_file}): write the "
                "objectives in its open search cell (objectives = [[metric, mode], ...])"
            )
        if not profile.objectives:
            studies = STUDIES.all().items()
            open_studies = [n for n, (_, ps) in studies if any(p.objectives for p in ps.values())]
            raise CxrkdError(
                f"study {study.name!r} has no open search to take --objective; it applies to "
                f"{open_studies}"
            )
        parse_objectives(options.objectives)  # the bad name, before the study is rebuilt
        profile = dataclasses.replace(profile, objectives=tuple(options.objectives))
    if options.study_file is None:
        # Rebuilt by the study's factory, not `replace(study, profile=...)`: the factory made
        # the stages' cells from the profile (budgets, fixed values).
        factory, _ = STUDIES.get(study.name)
        study = factory(profile)
    else:  # a file's cells are as written: the budget is changed in them
        study = _file_study(study, profile, options.num_samples)
    study = _pin_cells(study, overrides)
    if options.only:
        study = restrict_study(study, select_cells(study, options.only))
    return study


def _file_study(study: Study, profile, num_samples: int | None) -> Study:
    """A study file's study with ``--num-samples`` (teacher cells keep fewer if they had)."""

    def budget(stage: Stage, cell):
        if num_samples is None or not isinstance(cell, SearchCell):
            return cell
        n = min(cell.num_samples, num_samples) if stage.role == Role.TEACHER else num_samples
        return dataclasses.replace(cell, num_samples=n)

    stages = [dataclasses.replace(s, cells=tuple(budget(s, c) for c in s.cells))
              for s in study.stages]  # fmt: skip
    return dataclasses.replace(study, profile=profile, stages=tuple(stages))


def cell_override(key: str) -> tuple[str, str] | None:
    """``"CELL.field"`` -> ``(CELL, field)``; a plain ``--set`` key -> None."""
    cell, dot, name = key.rpartition(".")
    return (cell, name) if dot else None


def _matching_cells(study: Study, pattern: str) -> list[SearchCell]:
    cells = [c for _, c in searched_cells(study) if isinstance(c, SearchCell)]
    hits = [c for c in cells if fnmatch.fnmatchcase(c.key, pattern)]
    if not hits:
        raise CxrkdError(
            f"--set {pattern}.…: no search cell of study {study.name!r} matches {pattern!r}; "
            f"its search cells: {[c.key for c in cells]}"
        )
    return hits


def _cell_fields(cell: SearchCell) -> set[str]:
    return field_names(TrainConfig) | field_names(get_method(cell.fixed["method"]).config_cls)


def _pin_cells(study: Study, overrides: dict) -> Study:
    """The study with each typed ``CELL.key`` override pinned in its matching search cells."""
    pins: dict[str, dict] = {}
    for key, value in overrides.items():
        if (target := cell_override(key)) is not None:
            for cell in _matching_cells(study, target[0]):
                pins.setdefault(cell.key, {})[target[1]] = value
    if not pins:
        return study
    if any("model" in p for p in pins.values()):
        from cxrkd.spaces.study_file import check_models  # timm: only when a model is pinned

        check_models(_replaced(study, pins), "--set")
    return _replaced(study, pins)


def _replaced(study: Study, pins: dict[str, dict]) -> Study:

    def pin(cell):
        if cell.key not in pins or not isinstance(cell, SearchCell):
            return cell
        return dataclasses.replace(cell, fixed={**cell.fixed, **pins[cell.key]})

    stages = [dataclasses.replace(s, cells=tuple(pin(c) for c in s.cells)) for s in study.stages]
    return dataclasses.replace(study, stages=tuple(stages))


def _typed_cell_override(study: Study, key: str, value) -> object:
    pattern, name = cell_override(key)
    if name == "method":
        raise CxrkdError(f"--set {key}=... is not allowed: the study defines the methods")
    out = None
    for cell in _matching_cells(study, pattern):
        fields = _cell_fields(cell)
        if name not in fields:
            raise CxrkdError(
                f"--set {key}: cell {cell.key!r} (method {cell.fixed['method']!r}) has no "
                f"field {name!r}; its fields: {sorted(fields)}"
            )
        cls = (
            TrainConfig
            if name in field_names(TrainConfig)
            else get_method(cell.fixed["method"]).config_cls
        )
        out = coerce_field(cls, name, value)
    return out


def typed_overrides(study: Study, overrides: dict) -> dict:
    """``--set`` strings -> typed values (checked against every config class that has them;
    a ``CELL.key`` one against the matching cells' config classes)."""
    per_cell = {k: v for k, v in overrides.items() if cell_override(k) is not None}
    overrides = {k: v for k, v in overrides.items() if k not in per_cell}
    _check_override_keys(study, overrides)
    classes = [TrainConfig] + [get_method(m).config_cls for m in sorted(study_methods(study))]
    out = {k: _typed_cell_override(study, k, v) for k, v in per_cell.items()}
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
            mine = {k: v for k, v in overrides.items() if k in keys}  # CELL.key: in the study
            out.append(dataclasses.replace(cell, fixed={**cell.fixed, **mine}))
        else:
            out.append(cell)  # the final stage re-runs chosen configs as they are
    return out
