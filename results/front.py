"""An open search's Pareto front (``results.table_specs.ParetoSpec``): the data behind its table
and its dashboard figure, pure functions of the trials frame.

:func:`search_points`: every trial of the search cell that reported all objectives, and
whether it is on the front, by the rule the driver chose with (``search.stage.choose``): among
trials that ran every epoch (else any), those no other trial dominates on all objectives.
:func:`front_table`: the final models of the cell (its front, or its one best configuration,
re-trained on seeds and tested), each with the validation objectives of the search trial it
re-trains (found by its configuration).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrkd.results.figure_data import config_string, final_rows, missing_columns, nondominated
from cxrkd.results.table_specs import ParetoSpec
from cxrkd.results.tables import _fmt_latency, _fmt_params, comparison_table, format_table
from cxrkd.spaces.studies import front_keys

TEST_METRICS = [("test_auroc_mcct", "test AUROC T2 (MCCT)"), ("test_auroc_mean", "test AUROC mean")]
# Set by the final stage on top of the chosen configuration: not part of it.
_FINAL_ONLY = ("seed", "evaluate_test")


def search_points(trials: pd.DataFrame, spec: ParetoSpec) -> pd.DataFrame:
    """One row per search trial with finite objectives: ``trial_id``, ``status``, one column
    per objective, ``front`` (bool), ``model``, ``config`` (the spec's keys, as text)."""
    names = [name for name, _ in spec.objectives]
    columns = ["trial_id", "status", *names, "front", "model", "config"]
    sel = trials[(trials["stage"] == spec.stage) & (trials["cell"] == spec.cell)]
    if sel.empty or missing_columns(sel, names):
        return pd.DataFrame(columns=columns)
    values = sel[names].apply(pd.to_numeric, errors="coerce")
    sel, values = sel[np.isfinite(values).all(axis=1)], values[np.isfinite(values).all(axis=1)]
    full = (sel["status"] == "completed").to_numpy()
    pool = full if full.any() else np.ones(len(sel), dtype=bool)
    front = np.zeros(len(sel), dtype=bool)
    front[pool] = nondominated(values.to_numpy()[pool], [mode for _, mode in spec.objectives])
    out = sel[["trial_id", "status"]].assign(**{n: values[n] for n in names}, front=front)
    out["model"] = sel.get("config/model", pd.Series("", index=sel.index)).astype(str)
    out["config"] = [config_string(row, spec.configs) for _, row in sel.iterrows()]
    return out[columns].reset_index(drop=True)


def final_keys(trials: pd.DataFrame, spec: ParetoSpec) -> list[str]:
    """The final cells of the spec's search cell, best first: its front's, else its own."""
    present = set(final_rows(trials)["cell"])
    return front_keys(spec.cell, present) or [c for c in (spec.cell,) if c in present]


def front_table(trials: pd.DataFrame, spec: ParetoSpec) -> pd.DataFrame:
    """:func:`results.tables.comparison_table` of the final models (test AUROCs, params,
    latency, chosen configuration), plus ``search_trial`` and ``val <objective>`` columns."""
    keys = final_keys(trials, spec)
    metrics = [(c, n) for c, n in TEST_METRICS if c in trials]
    if not metrics:
        metrics = TEST_METRICS[:1]
    numeric = comparison_table(
        trials,
        rows=[(key, key) for key in keys],
        metrics=metrics,
        hyperparams={key: spec.configs for key in keys},
    )
    searched = trials[(trials["stage"] == spec.stage) & (trials["cell"] == spec.cell)]
    done = final_rows(trials)
    matches = [_search_trial(searched, done[done["cell"] == key].iloc[0]) for key in keys]
    numeric.insert(3, "search_trial", [m["trial_id"] if m is not None else None for m in matches])
    for i, (name, _) in enumerate(spec.objectives):
        values = [float(m[name]) if m is not None and name in m else np.nan for m in matches]
        numeric.insert(4 + i, f"val {name}", values)
    return numeric


def _search_trial(searched: pd.DataFrame, final: pd.Series) -> pd.Series | None:
    """The search trial whose configuration the final row re-trains."""
    for _, row in searched.iterrows():
        keys = [c for c in searched.columns if c.startswith("config/") and pd.notna(row[c])]
        keys = [c for c in keys if c.removeprefix("config/") not in _FINAL_ONLY]
        if all(c in final and final[c] == row[c] for c in keys):
            return row
    return None


def front_display(numeric: pd.DataFrame, spec: ParetoSpec, *, digits: int = 3) -> pd.DataFrame:
    """Display strings: the final cell, its seeds, the search trial's objectives, then the
    test metrics, params, latency and configuration as :func:`format_table` writes them."""
    display = format_table(numeric.drop(columns=["search_trial"]), digits=digits)
    display = display.rename(columns={"model": "final cell"})
    fmt = {"params": _fmt_params, "flops": _fmt_params, "latency_ms": _fmt_latency}
    for i, (name, _) in enumerate(spec.objectives):
        show = fmt.get(name, lambda v: "–" if pd.isna(v) else f"{v:.{digits}f}")
        display.insert(2 + i, f"{name} (search)", [show(v) for v in numeric[f"val {name}"]])
    return display
