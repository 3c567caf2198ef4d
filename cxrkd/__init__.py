"""cxrkd's public API: run and resume a study, read a run's results, list what is registered.

The layers are installed under this package (``cxrkd.trainables``, ``cxrkd.spaces``,
``cxrkd.results``, ``cxrkd.search``); what is here is the part meant for scripts and notebooks,
and it stays stable when the layers' modules move::

    import cxrkd

    cxrkd.studies()   # ['lowres-kd', 'lowres-kd-open', 'pneumonia-kd', 'pneumonia-kd-open']
    run = cxrkd.run("pneumonia-kd", profile="demo", num_samples=2, name="my-first-run")
    trials, epochs = cxrkd.load_run(run)  # pandas frames: one row per trial / per trial-epoch
    trials.groupby("cell")["val_auc"].max()

``run`` and ``resume`` start a local Ray (or join ``address``) exactly as ``cxrkd search run``
and ``cxrkd search resume`` do, with the same checks and the same run folder. Torch, Ray and
the plotting stack are imported only when a function needs them, so ``import cxrkd`` is cheap.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxrkd")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "kd_losses",
    "load_run",
    "methods",
    "profiles",
    "registries",
    "resume",
    "run",
    "run_folder",
    "studies",
]


def run(study: str, profile: str = "demo", **options) -> str:
    """Run ``study`` under ``profile`` to the end and return its run folder (a path or URI).

    ``options`` are :class:`cxrkd.search.run_state.RunOptions` fields, as the command line's
    flags: ``dataset``, ``name``, ``storage``, ``address``, ``num_samples``,
    ``max_concurrent``, ``gpus_per_trial``, ``cpus_per_trial``, ``overrides``
    (``{"cell.key": "value"}`` as ``--set``), ``seed``, ``weights_dir``, ``objectives``,
    ``only``. Bad input raises :class:`cxrkd.trainables.errors.CxrkdError` naming the fix.
    """
    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.runner import run_study

    return run_study(RunOptions(study=study, profile=profile, **options))


def resume(run: str, address: str | None = None) -> str:
    """Continue an interrupted run (a name under the default storage, a path or a URI) with
    the options it was started with; returns its run folder."""
    from cxrkd.search.runner import resume_study

    return resume_study(run, address=address)


def run_folder(run: str) -> str:
    """The folder (path or URI) of ``run``: a name under the default storage
    (``$CXRKD_HOME/runs``), a path or a URI."""
    from cxrkd.search.run_state import run_uri_of

    return run_uri_of(run)


def load_run(run: str):
    """``(trials, epochs)`` pandas frames of a run, finished or still going: one row per trial
    (its newest record) and one per (trial, epoch). The columns are those of the run's
    ``trials.parquet`` and ``epochs.parquet`` (README, "Reading the results")."""
    from cxrkd.results.frames import load_records

    return load_records(run_folder(run))


def studies() -> list[str]:
    """The registered studies' names."""
    from cxrkd.spaces.studies import STUDIES

    return sorted(STUDIES.all())


def profiles(study: str) -> list[str]:
    """The profiles ``study`` can run under (``demo``, ``paper``, ...)."""
    from cxrkd.spaces.studies import STUDIES

    return sorted(STUDIES.get(study)[1])


def methods() -> list[str]:
    """The registered training methods (each one Ray Tune trainable configuration)."""
    from cxrkd.trainables.methods import METHODS

    return sorted(METHODS.all())


def kd_losses() -> list[str]:
    """The registered KD losses, in their table order."""
    from cxrkd.trainables.kd import kd_names

    return list(kd_names())


def registries() -> dict:
    """The registries a new module adds itself to: ``{"study", "study_tables", "method",
    "space", "kd_loss"}``, each a :class:`cxrkd.trainables.registry.Registry` (``.all()``,
    ``.get(name)``, ``.add``). What adds to them: ``register_study``
    (``cxrkd.spaces.studies``), ``register_tables`` (``cxrkd.results.study_tables``),
    ``register_method`` (``cxrkd.trainables.methods``), ``register_space``
    (``cxrkd.spaces``) and ``register_kd`` (``cxrkd.trainables.kd``)."""
    from cxrkd.results.study_tables import STUDY_TABLES
    from cxrkd.spaces import SPACES
    from cxrkd.spaces.studies import STUDIES
    from cxrkd.trainables.kd import KD_LOSSES
    from cxrkd.trainables.methods import METHODS

    return {
        "study": STUDIES,
        "study_tables": STUDY_TABLES,
        "method": METHODS,
        "space": SPACES,
        "kd_loss": KD_LOSSES,
    }
