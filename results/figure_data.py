"""The data behind every dashboard figure: pure functions of the trials/epochs frames.

Each function returns a tidy DataFrame (tested directly); :mod:`results.plots` only draws
them and :mod:`results.sections` lays the drawings out in the dashboard. Statuses are those of
the records (``completed``: ran every epoch, ``stopped``: stopped early by ASHA, ``errored``,
``running``); figures of the final models use completed final-stage trials only, as the tables
do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrkd.trainables.metrics import CONFUSION_PREFIX

STATUSES = ("completed", "stopped", "errored", "running")
# The low-resolution study's story needs these columns in its final-stage trials.
RESOLUTION_COLUMNS = (
    "config/low_res",
    "config/kd_approach",
    "config/model",
    "test_auroc_mcct",
    "test_auroc_mlct",
)
RESOLUTION_METRICS = {"test_auroc_mlct": "T1 (MLCT)", "test_auroc_mcct": "T2 (MCCT)"}
NO_KD = "no KD"
# Confusion counts at the threshold chosen on validation: (column, actual, predicted).
CONFUSION = (
    ("test_tn_at_val_thr", "negative", "negative"),
    ("test_fp_at_val_thr", "negative", "positive"),
    ("test_fn_at_val_thr", "positive", "negative"),
    ("test_tp_at_val_thr", "positive", "positive"),
)


def missing_columns(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns a figure needs that the frame lacks (or holds only nulls in)."""
    return [c for c in columns if c not in frame or frame[c].isna().all()]


def stage_order(trials: pd.DataFrame, stages: Sequence[str] = ()) -> list[str]:
    """The study's stages that have trials, in study order, then any others as they appear."""
    present = list(dict.fromkeys(trials["stage"]))
    return [s for s in stages if s in present] + [s for s in present if s not in stages]


def trial_order(frame: pd.DataFrame) -> pd.Series:
    """Tune's trial index (the number in front of ``experiment_tag``), else the row order."""
    position = pd.Series(np.arange(len(frame)), index=frame.index, dtype="int64")
    if "experiment_tag" not in frame:
        return position
    index = frame["experiment_tag"].astype("string").str.extract(r"^(\d+)_", expand=False)
    return pd.to_numeric(index, errors="coerce").fillna(position).astype("int64")


def final_rows(trials: pd.DataFrame, *, stage: str = "final") -> pd.DataFrame:
    """Completed trials of the final stage: the re-trained, tested models."""
    return trials[(trials["stage"] == stage) & (trials["status"] == "completed")]


def searched_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials of the search stages: all but those evaluated on test (the final stage)."""
    if "config/evaluate_test" not in trials:
        return trials
    tested = trials["config/evaluate_test"].astype("boolean").fillna(False).astype(bool)
    return trials[~tested]


def trial_counts(trials: pd.DataFrame, *, stages: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (stage, cell): ``trials`` and one count column per status in STATUSES."""
    rows = []
    for stage in stage_order(trials, stages):
        sel = trials[trials["stage"] == stage]
        for cell in dict.fromkeys(sel["cell"]):
            status = sel.loc[sel["cell"] == cell, "status"].fillna("running")
            counts = status.value_counts()
            row = {"stage": stage, "cell": cell, "trials": len(status)}
            row.update({s: int(counts.get(s, 0)) for s in STATUSES})
            rows.append(row)
    return pd.DataFrame(rows, columns=["stage", "cell", "trials", *STATUSES])


def best_trials(
    trials: pd.DataFrame,
    *,
    metric: str,
    mode: str = "max",
    params: Mapping[tuple[str, str], Sequence[str]] | None = None,
    stages: Sequence[str] = (),
) -> pd.DataFrame:
    """Each (stage, cell)'s best trial by ``metric``, chosen as the driver chooses: among
    trials that ran every epoch if any reported a finite value, else among any.

    Columns: ``stage``, ``cell``, ``trial_id``, ``status``, ``value``, ``config``
    (``name=value`` of the cell's searched ``params``; all varying ``config/*`` columns when
    ``params`` does not name the cell).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    rows = []
    if metric not in trials:
        return pd.DataFrame(columns=["stage", "cell", "trial_id", "status", "value", "config"])
    for stage in stage_order(trials, stages):
        sel = trials[trials["stage"] == stage]
        for cell in dict.fromkeys(sel["cell"]):
            group = sel[sel["cell"] == cell]
            values = pd.to_numeric(group[metric], errors="coerce")
            finite = group[np.isfinite(values)]
            if finite.empty:
                continue
            full = finite[finite["status"] == "completed"]
            pool = full if len(full) else finite
            pool_values = pd.to_numeric(pool[metric])
            best = pool.loc[pool_values.idxmax() if mode == "max" else pool_values.idxmin()]
            names = (params or {}).get((stage, cell)) or varying_params(group)
            rows.append(
                {
                    "stage": stage,
                    "cell": cell,
                    "trial_id": best["trial_id"],
                    "status": best["status"],
                    "value": float(best[metric]),
                    "config": config_string(best, names),
                }
            )
    return pd.DataFrame(rows, columns=["stage", "cell", "trial_id", "status", "value", "config"])


def varying_params(group: pd.DataFrame, *, skip: Sequence[str] = ("seed",)) -> list[str]:
    """Names of the ``config/*`` columns that take more than one value in ``group``."""
    return [
        column.removeprefix("config/")
        for column in group.columns
        if column.startswith("config/")
        and column.removeprefix("config/") not in skip
        and group[column].astype("string").nunique(dropna=True) > 1
    ]


def config_string(row: pd.Series, names: Sequence[str]) -> str:
    """``lr=0.00123, alpha=0.5``: 3 significant digits, the way people read them."""
    parts = []
    for name in names:
        value = row.get(f"config/{name}")
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        text = f"{value:.3g}" if isinstance(value, (float, np.floating)) else str(value)
        parts.append(f"{name}={text}")
    return ", ".join(parts)


def cell_roles(trials: pd.DataFrame, *, teacher_stages: Sequence[str] = ("teacher",)) -> pd.Series:
    """``teacher`` (the cell was searched in a teacher stage), ``student`` (it learns from a
    teacher: ``config/teacher_path`` is set) or ``baseline``; indexed by cell."""
    roles = {}
    teachers = set(trials.loc[trials["stage"].isin(teacher_stages), "cell"])
    has_teacher = trials.get("config/teacher_path", pd.Series(index=trials.index, dtype=object))
    for cell in dict.fromkeys(trials["cell"]):
        if cell in teachers:
            roles[cell] = "teacher"
        elif has_teacher[trials["cell"] == cell].notna().any():
            roles[cell] = "student"
        else:
            roles[cell] = "baseline"
    return pd.Series(roles, name="role", dtype=object)


def nondominated(points: Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """The Pareto front of ``points`` (one row per point, one column per objective; ``modes``
    ``"max"``/``"min"`` per column): True where no other point is at least as good in every
    objective and strictly better in one. Equal points do not dominate each other (all stay);
    a point with a non-finite value is never on the front."""
    bad = [m for m in modes if m not in ("max", "min")]
    if bad or not modes:
        raise ValueError(f"modes must be 'max' or 'min' per objective, got {list(modes)!r}")
    q = np.asarray(points, dtype=float).reshape(-1, len(modes))
    q = q * np.array([1.0 if m == "max" else -1.0 for m in modes])  # all maximised
    ok = np.isfinite(q).all(axis=1)
    mask = np.zeros(len(q), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (q >= q[i]).all(axis=1) & (q > q[i]).any(axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_mask(values: Sequence[float], costs: Sequence[float]) -> np.ndarray:
    """:func:`nondominated` of (higher value, lower cost) pairs."""
    return nondominated(np.column_stack([values, costs]), ("max", "min"))


def pareto_points(
    trials: pd.DataFrame,
    *,
    metric: str = "test_auc",
    stage: str = "final",
    teacher_stages: Sequence[str] = ("teacher",),
) -> pd.DataFrame:
    """One row per final cell: mean/std of ``metric`` over its seeds, median ``params`` and
    ``latency_ms``, its role, and whether it is on the front against latency and against
    parameters (``front_latency_ms``, ``front_params``)."""
    done = final_rows(trials, stage=stage)
    columns = ["cell", "role", "n_seeds", "value", "std", "params", "latency_ms"]
    columns += ["front_latency_ms", "front_params"]
    if done.empty or missing_columns(done, [metric]):
        return pd.DataFrame(columns=columns)
    roles = cell_roles(trials, teacher_stages=teacher_stages)
    rows = []
    for cell, group in done.groupby("cell", sort=False):
        values = pd.to_numeric(group[metric], errors="coerce")
        rows.append(
            {
                "cell": cell,
                "role": roles[cell],
                "n_seeds": int(values.notna().sum()),
                "value": values.mean(),
                "std": values.std(ddof=1),
                "params": _median(group, "params"),
                "latency_ms": _median(group, "latency_ms"),
            }
        )
    out = pd.DataFrame(rows)
    out["front_latency_ms"] = pareto_mask(out["value"], out["latency_ms"])
    out["front_params"] = pareto_mask(out["value"], out["params"])
    return out[columns]


def _median(group: pd.DataFrame, column: str) -> float:
    if column not in group:
        return float("nan")
    return float(pd.to_numeric(group[column], errors="coerce").median())


def resolution_curves(trials: pd.DataFrame, *, stage: str = "final") -> pd.DataFrame:
    """AUROC against input resolution per (model, KD approach), for the low-resolution study.

    One row per (model, approach, resolution, metric): ``mean``, ``std`` (ddof=1) and
    ``n_seeds`` over the completed final-stage trials. ``resolution`` is ``config/low_res``;
    0 or missing means the model saw full-resolution images (``config/img_size``). Trials
    without a KD approach are ``no KD``. Empty when :data:`RESOLUTION_COLUMNS` are missing.
    """
    columns = ["model", "approach", "resolution", "metric", "task", "mean", "std", "n_seeds"]
    done = final_rows(trials, stage=stage)
    if done.empty or missing_columns(done, RESOLUTION_COLUMNS):
        return pd.DataFrame(columns=columns)
    low = pd.to_numeric(done["config/low_res"], errors="coerce").fillna(0)
    full = pd.to_numeric(done.get("config/img_size", pd.Series(np.nan, index=done.index)))
    frame = pd.DataFrame(
        {
            "model": done["config/model"].astype(str),
            "approach": done["config/kd_approach"]
            .astype(object)
            .where(done["config/kd_approach"].notna(), NO_KD),
            "resolution": low.where(low > 0, full),
        }
    )
    rows = []
    for metric, task in RESOLUTION_METRICS.items():
        frame["value"] = pd.to_numeric(done[metric], errors="coerce")
        for (model, approach, res), group in frame.groupby(
            ["model", "approach", "resolution"], sort=True, dropna=True
        ):
            rows.append(
                {
                    "model": model,
                    "approach": approach,
                    "resolution": int(res),
                    "metric": metric,
                    "task": task,
                    "mean": group["value"].mean(),
                    "std": group["value"].std(ddof=1),
                    "n_seeds": int(group["value"].notna().sum()),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def learning_curves(
    epochs: pd.DataFrame, trials: pd.DataFrame, *, metric: str, stage: str
) -> pd.DataFrame:
    """The stage's ``metric`` per (trial, epoch), with each trial's status from the trials
    frame (``running`` when it has no row yet) and ``last`` marking its last reported epoch,
    where a stopped or errored trial is drawn with a marker."""
    columns = ["cell", "trial_id", "epoch", "value", "status", "last"]
    sel = epochs[epochs["stage"] == stage] if metric in epochs else epochs.iloc[0:0]
    if sel.empty:
        return pd.DataFrame(columns=columns)
    status = trials.loc[trials["stage"] == stage].set_index(["cell", "trial_id"])["status"]
    out = sel[["cell", "trial_id", "epoch"]].copy()
    out["value"] = pd.to_numeric(sel[metric], errors="coerce")
    keys = pd.MultiIndex.from_frame(out[["cell", "trial_id"]])
    out["status"] = status.reindex(keys).fillna("running").to_numpy()
    out = out.sort_values(["cell", "trial_id", "epoch"], kind="stable")
    out["last"] = ~out.duplicated(["cell", "trial_id"], keep="last")
    return out[columns].reset_index(drop=True)


def multiclass_confusion(trials: pd.DataFrame) -> tuple[tuple[str, str, str], ...]:
    """``(column, actual, predicted)`` of a multi-class run's test confusion counts
    (``test_cm:<true>:<predicted>``, :func:`trainables.metrics.confusion_key`), the classes
    in the order of their per-class AUROC columns; empty for another run."""
    prefix = f"test_{CONFUSION_PREFIX}"
    bodies = [c.removeprefix(prefix) for c in trials.columns if c.startswith(prefix)]
    names = list(
        dict.fromkeys(c.removeprefix("test_auroc_") for c in trials if c.startswith("test_auroc_"))
    )
    out = []
    for actual in names:  # class names may hold ':'; each key is split where both are classes
        out += [(prefix + f"{actual}:{p}", actual, p) for p in names if f"{actual}:{p}" in bodies]
    return tuple(out) if len(out) == len(bodies) and out else ()


def confusion_counts(trials: pd.DataFrame, *, stage: str = "final") -> pd.DataFrame:
    """Test confusion counts per final cell, summed over its seeds: one row per (cell, actual,
    predicted) with ``count`` and ``n_seeds``. Binary: at the validation threshold
    (``negative``/``positive``); multi-class: the argmax's, the classes by name."""
    columns = ["cell", "actual", "predicted", "count", "n_seeds"]
    done = final_rows(trials, stage=stage)
    confusion = multiclass_confusion(done) or CONFUSION
    if done.empty or missing_columns(done, [c for c, _, _ in confusion]):
        return pd.DataFrame(columns=columns)
    rows = []
    for cell, group in done.groupby("cell", sort=False):
        for column, actual, predicted in confusion:
            counts = pd.to_numeric(group[column], errors="coerce")
            rows.append(
                {
                    "cell": cell,
                    "actual": actual,
                    "predicted": predicted,
                    "count": int(counts.sum()),
                    "n_seeds": int(counts.notna().sum()),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def operating_points(trials: pd.DataFrame, *, stage: str = "final") -> pd.DataFrame:
    """Each final model's (fpr, tpr) on test at the threshold chosen on validation."""
    columns = ["cell", "trial_id", "fpr", "tpr"]
    done = final_rows(trials, stage=stage)
    if done.empty or missing_columns(done, [c for c, _, _ in CONFUSION]):
        return pd.DataFrame(columns=columns)
    n = {c.split("_")[1]: pd.to_numeric(done[c], errors="coerce") for c, _, _ in CONFUSION}
    return pd.DataFrame(
        {
            "cell": done["cell"],
            "trial_id": done["trial_id"],
            "fpr": n["fp"] / (n["fp"] + n["tn"]),
            "tpr": n["tp"] / (n["tp"] + n["fn"]),
        }
    ).reset_index(drop=True)
