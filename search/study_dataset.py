"""The study's dataset: the one ``--dataset`` names, else its built-in synthetic one (imported on
first use, for the demo profile only), refused when its task and labels do not fit the study."""

from __future__ import annotations

from cxrkd.search.study_options import study_methods
from cxrkd.spaces.studies import Study
from cxrkd.trainables.data.store import DatasetStore, datasets_dir
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.methods import get_method

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
    from cxrkd.trainables.data.importers import import_dataset

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
    # A binary study's one-head methods learn a multi-class dataset too (softmax over its
    # classes; `auc` is then the one-vs-rest macro AUROC); each method is checked below.
    if manifest.task != study.task and (study.task, manifest.task) != ("binary", "multiclass"):
        raise CxrkdError(
            f"study {study.name!r} needs a {study.task} dataset: {needs}; but {have}; {fix}"
        )
    for method in sorted(study_methods(study)):
        if manifest.task not in get_method(method).tasks:
            raise CxrkdError(
                f"method {method!r} of study {study.name!r} learns "
                f"{list(get_method(method).tasks)} labels; but {have}; {fix}"
            )
    if study.task == "multilabel" and not manifest.finding_labels:
        raise CxrkdError(
            f"study {study.name!r} needs {needs}; but {have} has no finding label; {fix}"
        )
