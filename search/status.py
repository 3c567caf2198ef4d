"""``cxrkd search status RUN``: stages, trials per cell by status, the best so far, errors."""

from __future__ import annotations

import json
import math

from cxrkd.results.frames import load_trials
from cxrkd.search.run_state import read_run, read_state, run_uri_of


def status_lines(run_uri: str) -> list[str]:
    raw = read_run(run_uri)
    opts = raw["options"]
    state, done = read_state(run_uri)
    lines = [
        f"run {run_uri}",
        f"  study {opts['study']} (profile {opts['profile']}) on dataset {opts['dataset']}",
        f"  stages done: {', '.join(done) or 'none'}",
    ]
    if opts.get("only"):
        lines.insert(2, f"  only the cells matching {opts['only']} and their teachers")
    for key, uri in state.teachers.items():
        lines.append(f"  teacher {key}: {uri}")
    trials = load_trials(run_uri)  # one row per trial, its newest (both layouts)
    if trials.empty:
        lines.append("  no trial has reported yet")
        return lines
    for (stage, cell), rows in trials.groupby(["stage", "cell"], sort=False):
        counts = rows["status"].value_counts().to_dict()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        best = rows["val_auc"].max() if "val_auc" in rows else float("nan")
        lines.append(f"  [{stage}] {cell:<22} {summary:<40} best val_auc {best:.4f}")
        for err in rows.loc[rows["status"] == "errored", "error"].dropna().unique()[:3]:
            lines.append(f"      error: {err}")
    return lines


def print_status(run: str) -> None:
    print("\n".join(status_lines(run_uri_of(run))))


# --- `search status RUN --json` -------------------------------------------------------------


def _study_of(opts: dict):
    """The run's study with its own objectives: ``search.study_options.study_with_options``
    without what does not change a metric (budgets, ``--set``, ``--only``), and without
    importing torch, which that module needs (the method registry) and a status line does not."""
    import dataclasses

    from cxrkd.spaces.studies import STUDIES, get_study

    study = get_study(opts["study"], opts["profile"])
    if opts.get("objectives"):
        factory, _ = STUDIES.get(study.name)
        study = factory(dataclasses.replace(study.profile, objectives=tuple(opts["objectives"])))
    return study


def _cell_metrics(study) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(stage, cell): (metric, mode)}`` of the cells searched on objectives of their own
    (an open search: the first, as ``search.cells.cell_objectives`` ranks them); every other
    cell is ranked by the study's metric."""
    from cxrkd.spaces.studies import SearchCell

    return {
        (stage.name, cell.key): cell.objectives[0]
        for stage in study.stages
        for cell in stage.cells
        if isinstance(cell, SearchCell) and cell.objectives
    }


def _number(value) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def status_record(run_uri: str) -> dict:
    """Where a run stands as one JSON-ready object: its options, stages, teachers, and per
    (stage, cell) the trials by status and the best trial by the study's own metric (an open
    search cell: its first objective)."""
    raw = read_run(run_uri)
    opts = raw["options"]
    state, done = read_state(run_uri)
    study = _study_of(opts)
    metrics = _cell_metrics(study)
    trials = load_trials(run_uri)
    cells = []
    for (stage, cell), rows in trials.groupby(["stage", "cell"], sort=False):
        metric, mode = metrics.get((stage, cell), (study.metric, study.mode))
        values = [_number(v) for v in rows[metric]] if metric in rows else [None] * len(rows)
        ranked = sorted(
            (v if mode == "min" else -v, str(t))
            for v, t in zip(values, rows["trial_id"], strict=True)
            if v is not None
        )
        best = None
        if ranked:
            key, trial_id = ranked[0]
            best = {"trial_id": trial_id, "value": key if mode == "min" else -key}
        errors = rows.loc[rows["status"] == "errored", "error"].dropna().unique()[:3]
        cells.append({
            "stage": stage,
            "cell": cell,
            "method": str(rows["method"].iloc[0]),
            "trials": len(rows),
            "status": {str(s): int(n) for s, n in rows["status"].value_counts().items()},
            "metric": metric,
            "mode": mode,
            "best": best,
            "errors": [str(e) for e in errors],
        })  # fmt: skip
    return {
        "run": run_uri,
        "name": opts.get("name"),
        "study": opts["study"],
        "profile": opts["profile"],
        "dataset": opts["dataset"],
        "only": opts.get("only"),
        "metric": study.metric,
        "mode": study.mode,
        "stages": [s.name for s in study.stages],
        "stages_done": done,
        "teachers": dict(state.teachers),
        "cells": cells,
    }


def print_status_json(run: str) -> None:
    print(json.dumps(status_record(run_uri_of(run)), sort_keys=False))
