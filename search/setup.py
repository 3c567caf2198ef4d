"""Checks and set-up done once by the driver before any trial starts.

Everything a user can get wrong (study, profile, dataset, ``--set`` keys and values, missing
pretrained weights, storage) fails here, with the fix, instead of in thirty trials.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from search.run_state import RunOptions
from search.subset import restrict_study, select_cells
from spaces.cell_space import CellSpace, expand_choices
from spaces.studies import (
    STUDIES,
    FixedCell,
    SearchCell,
    Study,
    StudyState,
    get_study,
    parse_objectives,
)
from trainables.config import TrainConfig, coerce_field, field_names, parse_config
from trainables.data.store import DatasetStore, datasets_dir
from trainables.errors import CxrkdError
from trainables.methods import get_method


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
    # Rebuilt by the study's factory, not `replace(study, profile=...)`: the stages' cell
    # functions close over the profile they were made with (budgets, fixed values).
    factory, _ = STUDIES.get(study.name)
    study = factory(profile)
    if options.only:
        study = restrict_study(study, select_cells(study, options.only))
    return study


def typed_overrides(study: Study, overrides: dict) -> dict:
    """``--set`` strings -> typed values (checked against every config class that has them)."""
    _check_override_keys(study, overrides)
    classes = [TrainConfig] + [get_method(m).config_cls for m in sorted(_study_methods(study))]
    out = {}
    for key, value in overrides.items():
        for cls in classes:
            if key in field_names(cls):
                out[key] = coerce_field(cls, key, value)
                break
    return out


def _study_methods(study: Study) -> set[str]:
    state = StudyState(placeholder=True)
    methods = set()
    for stage in study.stages:
        if stage.role == "final":
            continue
        for cell in stage.cells(state):  # fixed cells may appear in any stage, not only final
            configs = cell.configs if isinstance(cell, FixedCell) else [cell.fixed]
            methods |= {config["method"] for config in configs}
    return methods


def _check_override_keys(study: Study, overrides: dict) -> None:
    valid = field_names(TrainConfig)
    for method in _study_methods(study):
        valid |= field_names(get_method(method).config_cls)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise CxrkdError(
            f"unknown --set key(s) {unknown} for study {study.name!r}; valid keys: {sorted(valid)}"
        )
    if "method" in overrides:
        raise CxrkdError("--set method=... is not allowed: the study defines the methods")


def apply_overrides(cells: list, overrides: dict) -> list:
    """Pin ``--set`` values in every cell whose method has that config field."""
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


# Profiles meant for the built-in synthetic data; the others (the papers' settings) refuse it
# unless --dataset names it, so no paper-scale table is made from phantoms by default.
SYNTHETIC_PROFILES = ("demo",)
# What a study's task asks of a dataset's labels, and where such a dataset comes from.
TASK_LABELS = {
    "binary": (
        "one positive label (e.g. PNEUMONIA) against normal",
        "`cxrkd data import kaggle-pneumonia DIR`",
    ),
    "multilabel": (
        "several local finding labels (the MLCT task) and a global abnormal label (the MCCT task)",
        "`cxrkd data import vindr DIR`",
    ),
}


def open_dataset(study: Study, name: str | None) -> DatasetStore:
    """The study's dataset: ``name``, else its built-in synthetic one (imported on first use,
    for the demo profile only); refused when its labels do not fit the study."""
    from trainables.data.importers import import_dataset

    explicit = name is not None
    name = name or study.default_dataset
    if not explicit and study.profile.name not in SYNTHETIC_PROFILES:
        _refuse_default_synthetic(study, name)
    if name == study.default_dataset and not (datasets_dir() / name).exists():
        kind, src, opts = study.default_import
        print(f"importing the built-in dataset {name!r} (SYNTHETIC phantom data)", flush=True)
        import_dataset(kind, src, name=name, progress=False, **opts)
    store = DatasetStore.open(name)
    check_labels(study, store.manifest)
    return store


def _refuse_default_synthetic(study: Study, name: str) -> None:
    """Before anything is imported: is the default dataset synthetic (phantom data)?"""
    path = datasets_dir() / name
    synthetic = (
        DatasetStore.open(name).manifest.synthetic
        if path.exists()
        else study.default_import[0] == "phantom"
    )
    if synthetic:
        _, source = TASK_LABELS.get(study.task, ("", "`cxrkd data import`"))
        raise CxrkdError(
            f"profile {study.profile.name!r} of study {study.name!r} is meant for real data, "
            f"but no --dataset was given and the built-in {name!r} is SYNTHETIC phantom data; "
            f"import a dataset ({source}) and pass it with --dataset NAME, or pass --dataset "
            f"{name} to run on the phantoms anyway (every table is then marked SYNTHETIC)"
        )


def check_labels(study: Study, manifest) -> None:
    """The dataset's task and labels must be what the study's methods learn."""
    needs, source = TASK_LABELS.get(study.task, (f"a {study.task} task", "`cxrkd data import`"))
    have = (
        f"{manifest.name!r} is {manifest.task} with labels {list(manifest.labels)} "
        f"(global label {manifest.global_label!r})"
    )
    fix = f"import such a dataset ({source}) and pass it with --dataset"
    if manifest.task != study.task:
        raise CxrkdError(
            f"study {study.name!r} needs a {study.task} dataset: {needs}; but {have}; {fix}"
        )
    for method in sorted(_study_methods(study)):
        if manifest.task not in get_method(method).tasks:
            raise CxrkdError(
                f"method {method!r} of study {study.name!r} learns "
                f"{list(get_method(method).tasks)} labels; but {have}; {fix}"
            )
    if study.task == "multilabel" and not manifest.finding_labels:
        raise CxrkdError(
            f"study {study.name!r} needs {needs}; but {have} has no finding label; {fix}"
        )


def check_models(models: dict[str, str]) -> None:
    """Every model name (``{name: cell key}``) must be one of cxrkd's own or timm's, whether
    or not it is pretrained: a typo would otherwise fail in every trial."""
    import difflib

    import timm

    from trainables.models import MODELS

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
    state = StudyState(placeholder=True)
    models: set[str] = set()
    names: dict[str, str] = {}  # every model, pretrained or not -> a cell that uses it
    weights_dir = None
    for stage in study.stages:
        if stage.role == "final":
            continue
        for searched in apply_overrides(stage.cells(state), overrides or {}):
            if isinstance(searched, FixedCell):
                continue
            for cell in expand_choices(searched):  # every size of an open search, etc.
                trial = optuna.create_study().ask()
                cfg = parse_config(CellSpace(cell)(trial))
                names.setdefault(cfg.train.model, cell.key)
                if cfg.train.pretrained:
                    models.add(cfg.train.model)
                    weights_dir = cfg.train.weights_dir
    check_models(names)
    if models:
        from trainables.weights import check_weights_available

        check_weights_available(sorted(models), weights_dir=weights_dir)


def init_ray(address: str | None) -> bool:
    """Attach to ``address`` (or ``RAY_ADDRESS``), else start a private local Ray.
    Returns True when this call started Ray (the caller shuts it down)."""
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Our own progress line replaces Tune's tables; the legacy output engine at verbose=0 is
    # silent, the new one still prints its banners.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address:
        ray.init(address=address, **quiet)
        return False
    ray.init(address="local", include_dashboard=False, **quiet)
    return True


def trial_resources(options: RunOptions) -> dict:
    import ray

    gpus = options.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        if not gpus and options.address:
            print(
                "note: the cluster has no GPU right now, so trials run on CPUs; on an "
                "autoscaling cluster whose GPU workers start on demand pass --gpus-per-trial 1 "
                "and --max-concurrent N",
                flush=True,
            )
    return {"cpu": options.cpus_per_trial, "gpu": gpus}


def max_concurrent(options: RunOptions) -> int:
    import ray

    if options.max_concurrent:
        return options.max_concurrent
    res = trial_resources(options)
    total = ray.cluster_resources()
    by_cpu = total.get("CPU", 1) // res["cpu"]
    by_gpu = total.get("GPU", 0) // res["gpu"] if res["gpu"] else by_cpu
    return max(1, int(min(by_cpu, by_gpu)))
