"""Each search cell's trials as an Optuna study: in memory for the dashboard's plots, and
exported to one SQLite storage in the run folder that ``optuna-dashboard`` opens as it is::

    optuna-dashboard sqlite:///<run>/optuna.db

Studies are named ``<stage>--<cell>`` (as the records files). A trial that ran every epoch is
``COMPLETE`` with its last ``metric``; one stopped early by ASHA is ``PRUNED`` (Optuna's word
for it, its value the last one reported, as ``study.tell`` does); an errored trial is
``FAIL``; one still going is ``RUNNING``. Each epoch's value is an intermediate value.

Distributions come from the study's own space functions (a throwaway trial asked through the
driver's view of the cell, so ranges, log scales and pinned values are exactly those
searched); where that is not possible they are inferred from the values the trials took.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from cxrkd.results.figure_data import searched_rows, trial_order, varying_params
from cxrkd.trainables import storage

Distributions = dict[str, BaseDistribution]
CellKey = tuple[str, str]  # (stage, cell)
OPTUNA_DB = "optuna.db"
_STATES = {
    "completed": TrialState.COMPLETE,
    "stopped": TrialState.PRUNED,
    "errored": TrialState.FAIL,
    "running": TrialState.RUNNING,
}


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """No INFO line per created study; the caller's verbosity is restored afterwards."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def study_name(stage: str, cell: str) -> str:
    return f"{stage}--{cell}"


def study_distributions(study) -> dict[CellKey, Distributions]:
    """``{(stage, cell): distributions}`` of every search cell of a ``spaces.studies.Study``,
    read from the study's cells as they are (a reference to an earlier cell's choice, such as
    a student's teacher, is a pinned value: it has no distribution)."""
    from cxrkd.spaces.cell_space import CellSpace  # the driver's view of a cell: pins and bounds
    from cxrkd.spaces.studies import SearchCell

    out: dict[CellKey, Distributions] = {}
    for stage in study.stages:
        for cell in stage.cells:
            if isinstance(cell, SearchCell):
                with quiet_optuna():
                    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
                trial = probe.ask()
                CellSpace(cell)(trial)
                out[(stage.name, cell.key)] = dict(trial.distributions)
    return out


def infer_distributions(group: pd.DataFrame, names: Sequence[str]) -> Distributions:
    """Distributions spanning the values the trials took: ints and floats as ranges (log
    scale when positive over more than two decades), anything else categorical."""
    out: Distributions = {}
    for name in names:
        values = group[f"config/{name}"].dropna()
        if values.empty:
            continue
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            out[name] = CategoricalDistribution(sorted(set(values.tolist()), key=str))
            continue
        low, high = float(values.min()), float(values.max())
        if pd.api.types.is_integer_dtype(values):
            out[name] = IntDistribution(int(low), int(high))
        else:
            log = low > 0 and high / low > 100
            out[name] = FloatDistribution(low, high, log=log)
    return out


def fit_distributions(group: pd.DataFrame, dists: Distributions) -> Distributions:
    """The space's distributions where they hold every value the trials took; inferred ones
    (keeping a log scale) where they do not: a run made with other bounds than the study has
    now, or a value pinned by ``--set`` outside the space's range."""
    out = dict(dists)
    for name, dist in dists.items():
        column = group.get(f"config/{name}")
        values = [] if column is None else column.dropna().tolist()
        if all(_contains(dist, v) for v in values):
            continue
        inferred = infer_distributions(group, [name])[name]
        if isinstance(inferred, FloatDistribution) and getattr(dist, "log", False):
            inferred = FloatDistribution(inferred.low, inferred.high, log=inferred.low > 0)
        out[name] = inferred
    return out


def _contains(dist: BaseDistribution, value: object) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(_python(value, dist))))
    except (ValueError, TypeError):
        return False


def _python(value: object, dist: BaseDistribution) -> object:
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, FloatDistribution):
        return float(value)
    return value.item() if isinstance(value, np.generic) else value


def _params(row: pd.Series, dists: Distributions) -> tuple[dict, Distributions]:
    params, used = {}, {}
    for name, dist in dists.items():
        value = row.get(f"config/{name}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if _contains(dist, value):  # always, after fit_distributions
            params[name], used[name] = _python(value, dist), dist
    return params, used


def frozen_trials(
    group: pd.DataFrame, epochs: pd.DataFrame, *, dists: Distributions, metric: str
) -> list[optuna.trial.FrozenTrial]:
    """One cell's trials (in Tune's order) as Optuna trials; see the module docstring."""
    curves = {
        tid: dict(zip(e["epoch"].astype(int), pd.to_numeric(e[metric]), strict=True))
        for tid, e in epochs.groupby("trial_id", sort=False)
    } if metric in epochs else {}  # fmt: skip
    out = []
    for _, row in group.assign(_order=trial_order(group)).sort_values("_order").iterrows():
        curve = curves.get(row["trial_id"], {})
        out.append(create_trial(**trial_fields(row, curve, dists=dists, metric=metric)))
    return out


def trial_fields(
    row: Mapping, curve: Mapping[int, float], *, dists: Distributions, metric: str
) -> dict:
    """One trial's records row (``status``, ``config/*``, ``metric``, ``error``) and its
    per-epoch ``metric`` as ``optuna.trial.create_trial``'s arguments; the live mirror
    (``search.optuna_live``) writes the same ones while the run goes."""
    state = _STATES.get(row["status"], TrialState.RUNNING)
    value = pd.to_numeric(row.get(metric), errors="coerce")
    finite = value is not None and bool(np.isfinite(value))
    if state in (TrialState.COMPLETE, TrialState.PRUNED) and not finite:
        state = TrialState.FAIL  # what Tune's OptunaSearch tells for a missing metric
    params, used = _params(row, dists)
    attrs = {"trial_id": str(row["trial_id"]), "status": str(row["status"])}
    if isinstance(row.get("error"), str):
        attrs["error"] = row["error"]
    return {
        "state": state,
        "value": float(value) if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
        "params": params,
        "distributions": used,
        "user_attrs": attrs,
        "intermediate_values": {int(k): float(v) for k, v in curve.items() if np.isfinite(v)},
    }


def cell_studies(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    metric: str,
    direction: str = "maximize",
    distributions: Mapping[CellKey, Distributions] | None = None,
    optuna_storage: optuna.storages.BaseStorage | None = None,
) -> dict[CellKey, optuna.Study]:
    """An Optuna study per search cell (in memory, or in ``optuna_storage``).

    Search cells are those ``distributions`` names; without ``distributions``, every cell
    whose trials were not evaluated on test (the final stage re-trains, it does not search),
    with distributions inferred from the ``config/*`` values that vary.
    """
    out = {}
    for (stage, cell), group in trials.groupby(["stage", "cell"], sort=False):
        if distributions is not None:
            if (stage, cell) not in distributions:
                continue
            dists = fit_distributions(group, distributions[(stage, cell)])
        elif len(searched_rows(group)) < len(group):
            continue
        else:
            dists = infer_distributions(group, varying_params(group))
        sel = epochs[(epochs["stage"] == stage) & (epochs["cell"] == cell)]
        with quiet_optuna():
            study = optuna.create_study(
                storage=optuna_storage, study_name=study_name(stage, cell), direction=direction
            )
        study.set_user_attr("metric", metric)
        study.set_user_attr("stage", stage)
        study.set_user_attr("cell", cell)
        study.add_trials(frozen_trials(group, sel, dists=dists, metric=metric))
        out[(stage, cell)] = study
    return out


def plot_notes(study: optuna.Study) -> dict[str, str | None]:
    """Why Optuna's ``history`` / ``parallel`` (coordinate) / ``importance`` plot of a cell
    would be empty or meaningless (``None`` where it has something to show; they draw
    ``COMPLETE`` trials only), and ``caveat``: what Optuna warns about the importances."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    others = len(study.trials) - len(complete)
    notes: dict[str, str | None] = dict.fromkeys(("history", "parallel", "importance", "caveat"))
    if not complete:
        why = f"no trial has run every epoch yet ({others} stopped early, errored or running)"
        return {**notes, "history": why, "parallel": why, "importance": why}
    common = set.intersection(*(set(t.params) for t in complete))
    varying = [n for n in common if len({repr(t.params[n]) for t in complete}) > 1]
    if not common:
        notes["parallel"] = "the trials share no searched parameter"
    if len(complete) < 2:
        notes["importance"] = "importances need at least 2 trials that ran every epoch"
    elif not varying:
        notes["importance"] = "no searched parameter varies across the completed trials"
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            optuna.importance.get_param_importances(study)
        said = list(dict.fromkeys(str(w.message) for w in caught))
        equal = [m for m in said if "will be equal" in m]
        if equal:  # PED-ANOVA on a handful of trials: every bar the same, which means nothing
            notes["importance"] = f"too few completed trials ({len(complete)}): {equal[0]}"
        notes["caveat"] = " ".join(m for m in said if m not in equal) or None
    return notes


def export_studies(
    uri: str,
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    metric: str,
    direction: str = "maximize",
    distributions: Mapping[CellKey, Distributions] | None = None,
) -> list[str]:
    """Write every search cell's study to the SQLite file ``uri`` (local or ``s3://``),
    replacing what an earlier report wrote; returns the study names."""
    with tempfile.TemporaryDirectory(prefix="cxrkd-optuna-") as tmp:
        local = os.path.join(tmp, OPTUNA_DB)
        rdb = optuna.storages.RDBStorage(f"sqlite:///{local}")
        try:
            studies = cell_studies(
                trials,
                epochs,
                metric=metric,
                direction=direction,
                distributions=distributions,
                optuna_storage=rdb,
            )
        finally:
            rdb.engine.dispose()  # every connection closed before the file is copied
        _put(local, storage.normalize(uri))
    return [study_name(stage, cell) for stage, cell in studies]


def _put(local: str, uri: str) -> None:
    fs, path = storage.filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if storage.is_remote(uri):
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            dst.write(src.read())
        return
    # A dashboard reading the old file keeps it until it reopens; readers never see half.
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(local, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read())
    os.replace(tmp, path)
