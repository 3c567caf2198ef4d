"""A run's folder on storage: its options (``run.json``) and what finished stages handed on
(``state.json``), so ``cxrkd search resume RUN`` continues with nothing lost or repeated."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

from cxrkd.spaces.studies import StudyState
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError


@dataclass(frozen=True)
class RunOptions:
    study: str
    profile: str = "demo"
    dataset: str | None = None
    name: str | None = None
    storage: str | None = None
    address: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    overrides: dict = field(default_factory=dict)
    seed: int = 0
    weights_dir: str | None = None
    objectives: list[str] | None = None  # an open search's metrics (spaces.studies.OBJECTIVES)
    only: list[str] | None = None  # --only: globs over cell keys (search.subset); None: all
    # --optuna-storage: where the cells' studies are mirrored live (search.optuna_live);
    # None: <run>/optuna-live.db on local storage; "none": nowhere
    optuna_storage: str | None = None
    # a study file's path (search.study_source); in run.json: the run folder's copy of it
    study_file: str | None = None
    # --log-to: experiment trackers (search.trackers); the names only, never a URL or key
    log_to: list[str] | None = None

    def __post_init__(self) -> None:
        if self.num_samples is not None and self.num_samples < 1:
            raise CxrkdError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise CxrkdError(f"--max-concurrent must be at least 1, got {self.max_concurrent}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise CxrkdError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        if self.cpus_per_trial <= 0:
            raise CxrkdError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.name is not None:
            check_run_name(self.name)


# Folders the storage layout keeps under the storage root beside the runs (the teacher
# registry: trainables.teachers.TeacherRegistry); a run may not take their names.
RESERVED_RUN_NAMES = frozenset({"teachers"})


def check_run_name(name: str) -> str:
    """A run name is one folder under the storage root: the dataset-name rule
    (:func:`trainables.data.store.check_name`), and not a folder the layout uses itself."""
    from cxrkd.trainables.data.store import check_name

    check_name(name, what="run", example="pneumonia-kd-demo-1")
    if name.lower() in RESERVED_RUN_NAMES:
        raise CxrkdError(
            f"run name {name!r} is reserved (the storage root's {name.lower()}/ folder is "
            "shared by all runs); pass another --name, e.g. --name pneumonia-kd-demo-1"
        )
    return name


def default_storage() -> str:
    from cxrkd.trainables.data.store import cxrkd_home

    return str(cxrkd_home() / "runs")


def run_uri_of(run: str) -> str:
    """A run named on the command line: a path or URI to its folder, or a name under the
    default storage."""
    if "://" in run or "/" in run:
        return storage.normalize(run)
    return storage.join(default_storage(), run)


def write_options(run_uri: str, options: RunOptions, extra: dict) -> None:
    """``run.json``: the options (what ``resume`` starts from) and what produced the run
    (package versions, the code's commit: :mod:`search.provenance`). Created exclusively
    (:func:`trainables.storage.create_exclusive`): of two ``search run`` of one name, one
    starts the run and the other is refused."""
    from cxrkd.search.provenance import provenance

    text = json.dumps(
        {
            "options": dataclasses.asdict(options),
            "created": time.time(),
            "provenance": provenance(),
            **extra,
        },
        indent=2,
        sort_keys=True,
        default=str,
    )
    if not storage.create_exclusive(storage.join(run_uri, "run.json"), text):
        raise run_exists(run_uri)


def run_exists(run_uri: str) -> CxrkdError:
    name = run_uri.rstrip("/").rsplit("/", 1)[-1]
    return CxrkdError(
        f"run {name!r} already exists at {run_uri}; continue it with "
        f"`cxrkd search resume {run_uri}` or pass another --name"
    )


def record_resume(run_uri: str, raw: dict) -> None:
    """Add this driver's provenance to ``run.json``'s ``resumed`` list: a resumed run may run
    on other code than the one that started it."""
    from cxrkd.search.provenance import provenance

    resumed = [*raw.get("resumed", []), {"at": time.time(), "provenance": provenance()}]
    storage.write_json(storage.join(run_uri, "run.json"), {**raw, "resumed": resumed})


def read_run(run_uri: str) -> dict:
    uri = storage.join(run_uri, "run.json")
    if not storage.exists(uri):
        raise CxrkdError(
            f"no run at {run_uri} (no run.json); pass the run's folder or its name under "
            f"{default_storage()} (see `cxrkd search run --name`)"
        )
    # Every reader builds RunOptions(**options): a damaged file or one written by another
    # cxrkd version must say so, not end in a TypeError from the constructor.
    try:
        raw = storage.read_json(uri)
        unknown = sorted(set(raw["options"]) - {f.name for f in dataclasses.fields(RunOptions)})
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(uri, exc) from None
    if unknown:
        raise CxrkdError(
            f"{uri} has options this cxrkd does not know: {unknown}; the run was started by "
            "another cxrkd version: resume it with that version"
        )
    # Resume, status and report all start here: a damaged state.json or records file stops
    # them before anything is written (resume rewrites run.json, report writes tables).
    read_state(run_uri)
    check_records(run_uri)
    return raw


def damaged(uri: str, exc: BaseException) -> CxrkdError:
    """The error for a run file that cannot be read: which file, what is wrong, the fix."""
    return CxrkdError(
        f"{uri} is damaged ({type(exc).__name__}: {exc}); restore it from a backup or "
        "start a new run"
    )


def read_state(run_uri: str) -> tuple[StudyState, list[str]]:
    state, done, _ = read_progress(run_uri)
    return state, done


def read_progress(run_uri: str) -> tuple[StudyState, list[str], list[str]]:
    """What the run has chosen, the stages it finished, and the cells it finished (as
    ``stage/key``: :func:`search.cells.cell_id`)."""
    uri = storage.join(run_uri, "state.json")
    if not storage.exists(uri):
        return StudyState(), [], []
    try:
        raw = storage.read_json(uri)
        teachers, best, done = raw["teachers"], raw["best"], raw["done"]
        cells = raw.get("cells_done", [])
        if not (isinstance(teachers, dict) and isinstance(best, dict)):
            raise TypeError("'teachers' and 'best' must be objects")
        for name, value in (("done", done), ("cells_done", cells)):
            if not (isinstance(value, list) and all(isinstance(d, str) for d in value)):
                raise TypeError(f"{name!r} must be a list of names")
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(uri, exc) from None
    return StudyState(teachers=teachers, best=best), done, cells


def read_records_file(uri: str):
    """One ``records/*.parquet`` file as a frame; a truncated or foreign file is a
    :func:`damaged` error, not pyarrow's."""
    try:
        return storage.read_parquet(uri)
    except ValueError as exc:  # pyarrow.ArrowInvalid: not parquet, truncated
        raise damaged(uri, exc) from None


def check_records(run_uri: str) -> None:
    """Every records file (both layouts: :func:`results.frames.record_files`) has a readable
    parquet footer (cheap: no rows read)."""
    import pyarrow.parquet as pq

    from cxrkd.results.frames import record_files

    for record in record_files(run_uri):
        fs, path = storage.filesystem(record.uri)
        try:
            with fs.open_input_file(path) as f:
                pq.read_metadata(f)
        except (OSError, ValueError) as exc:
            if storage.exists(record.uri):  # else merged away by a compaction meanwhile
                raise damaged(record.uri, exc) from None


def write_state(
    run_uri: str, state: StudyState, done: list[str], cells_done: list[str] = ()
) -> None:
    storage.write_json(
        storage.join(run_uri, "state.json"),
        {
            "teachers": state.teachers,
            "teacher_uri": state.teacher_uri,  # the first teacher, for single-teacher studies
            "best": state.best,
            "done": done,
            "cells_done": list(cells_done),
        },
    )
