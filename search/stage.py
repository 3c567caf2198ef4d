"""Choosing each cell's configuration, registering a teacher, and retrying lost workers only
(the study's experiment: :mod:`search.study_run`)."""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path

from ray import exceptions as ray_errors
from ray.tune.experiment import Trial

from cxrkd.results.figure_data import nondominated
from cxrkd.search.cells import cell_epochs, cell_objectives
from cxrkd.spaces.studies import Cell, StudyState, front_key
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.teachers import TeacherKey, TeacherRegistry
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

# Retries of a trial whose worker process died (a lost node, an OOM-kill): only those, as
# an error the trial raised itself (a CxrkdError, a non-finite loss, CUDA out of memory)
# would recur on every retry; see `retry_lost_workers_only`.
MAX_FAILURES = 2
# Checkpoints Tune keeps per trial (the newest ones). One is enough to resume from, because
# Tune's deletion of the older ones waits (search.snapshots.durable_snapshots) until an
# experiment snapshot naming a newer one is on the run storage: a driver killed at any moment
# resumes every trial from a checkpoint that is still there. Two, not one: Tune forces a
# snapshot whenever a trial has saved this many checkpoints since the last one; one would
# force a snapshot (and its upload) after every epoch.
KEEP_CHECKPOINTS = 2


def stage_epochs(cells: list[Cell], *, default: int) -> int:
    """The most epochs any trial of these cells runs: a study may train its teachers longer
    than the profile's students."""
    return max((e for c in cells for e in cell_epochs(c, default=default)), default=default)


def worker_lost(exc: BaseException | None) -> bool:
    """Whether a trial failed because its process or node went away (worth a retry), not
    because of what it computed (which a retry would compute again). Tune hands over an
    error the trial raised as a ``RayTaskError`` whose ``cause`` is the original one."""
    lost = (
        ray_errors.RayActorError,  # ActorDiedError, ActorUnavailableError: the actor is gone
        ray_errors.WorkerCrashedError,
        ray_errors.NodeDiedError,
        ray_errors.LocalRayletDiedError,
        ray_errors.OutOfMemoryError,  # Ray's memory monitor killed the worker to save its node
        ray_errors.ObjectLostError,  # the data bundle's copy went down with a node
    )
    seen = 0
    while exc is not None and seen < 8:  # a cause chain, bounded
        if isinstance(exc, lost):
            return True
        exc = exc.cause if isinstance(exc, ray_errors.RayTaskError) else None
        seen += 1
    return False


@contextlib.contextmanager
def retry_lost_workers_only():
    """While Tune runs: a trial retries (``FailureConfig.max_failures``) only when
    :func:`worker_lost` says so, and ends at once on any error it raised itself.

    Tune has no such setting: ``Trial.handle_error`` counts every failure alike and
    ``Trial.should_recover`` compares the count with ``max_failures`` right after (Ray 2.60,
    ``ray/tune/experiment/trial.py``). Wrapping ``handle_error``, the one place Tune hands a
    trial its exception, sets that trial's ``max_failures`` to 0 for a deterministic error,
    so Tune errors it with the trial's own reason. The trial is finished then, so the 0
    that Tune's experiment snapshot keeps for it changes nothing on a resume."""
    tune_handle_error = Trial.handle_error

    def handle_error(trial, exc=None):
        tune_handle_error(trial, exc)
        if not worker_lost(exc):
            trial.max_failures = 0

    Trial.handle_error = handle_error
    try:
        yield
    finally:
        Trial.handle_error = tune_handle_error


def choose(results, *, metric: str, cells: list[Cell] = ()) -> dict[str, object]:
    """Each cell's chosen Result: the best final value of its metric (its first objective, else
    the study's ``metric``) among trials that ran every epoch (early-stopped trials are not
    comparable), else the best among any that reported it. A multi-objective cell also hands
    on its Pareto front, best first, under :func:`front_key` keys."""
    objectives = {c.key: cell_objectives(c, metric=metric, mode="max") for c in cells}
    by_cell: dict[str, list] = {}
    for result in results:
        cell = result.config[CELL_KEY]
        names = [m for m, _ in objectives.get(cell, ((metric, "max"),))]
        ok = result.error is None and result.metrics and all(m in result.metrics for m in names)
        if ok and all(_finite(result.metrics[m]) for m in names):
            by_cell.setdefault(cell, []).append(result)
    chosen = {}
    for cell, rs in by_cell.items():
        full = [r for r in rs if r.metrics["epoch"] == int(r.config["epochs"])] or rs
        pairs = objectives.get(cell, ((metric, "max"),))
        ranked = sorted(full, key=lambda r: _rank_key(r, pairs))
        chosen[cell] = ranked[0]
        if len(pairs) > 1:
            values = [[r.metrics[m] for m, _ in pairs] for r in ranked]
            front = [r for r, on in zip(ranked, nondominated(values, [d for _, d in pairs]),
                                        strict=True) if on]  # fmt: skip
            for rank, result in enumerate(front, start=1):
                chosen[front_key(cell, rank)] = result
    return chosen


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _rank_key(result, pairs) -> tuple:
    """Best first: by each objective in turn, then by trial id (a stable order)."""
    signs = [-1.0 if mode == "max" else 1.0 for _, mode in pairs]
    return (*(s * float(result.metrics[m]) for s, (m, _) in zip(signs, pairs, strict=True)),
            str(result.metrics.get("trial_id", "")))  # fmt: skip


def config_of(result) -> dict:
    return {k: v for k, v in result.config.items() if k not in (CELL_KEY, STAGE_KEY)}


def register_teacher(ctx, cell: str, result, state: StudyState) -> str:
    """Put the chosen teacher in the registry and compute its cached outputs once."""
    if result.checkpoint is None:
        raise CxrkdError("the chosen teacher trial has no checkpoint; cannot register it")
    resolved = parse_config(config_of(result)).to_flat()  # every field, defaults included
    key = TeacherKey.from_config(resolved, ctx.dataset_fingerprint)
    registry = TeacherRegistry(ctx.storage_uri)
    uri = registry.lookup(key)
    if uri is None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = result.checkpoint.to_directory(tmp)
            # The registry keeps the model and its config; optimiser state would triple what
            # every node downloads.
            (Path(folder) / "state.pt").unlink(missing_ok=True)
            metrics = {k: v for k, v in result.metrics.items() if k.startswith("val_")}
            uri = registry.register(key, folder, metrics)
    state.teachers[cell] = uri
    return uri
