"""``cxrkd search plan``: what ``cxrkd search run`` would run, and its bill, before anything runs.

The study is built exactly as ``search run`` builds it
(:func:`search.study_options.study_with_options`: profile, ``--set``, ``--num-samples``,
``--objective``, ``--only``); its cells' trials and trial-epochs are counted in three cases
(:mod:`search.plan_counts`: best, typical, worst) and costed on one device kind
(:mod:`search.plan_costs`: seconds, device-hours, dollars, wall time over ``workers``). No Ray,
no Optuna study, no run folder, no import.
"""

from __future__ import annotations

from dataclasses import asdict

from cxrkd.search.plan_costs import (
    STARTUP_S,
    Rates,
    add_costs,
    dataset_images,
)
from cxrkd.search.plan_counts import CASES, StagePlan, plan_counts
from cxrkd.search.plan_throughput import ThroughputTable, probe_table
from cxrkd.search.run_state import RunOptions
from cxrkd.search.schedule import flop_levels, study_makespan
from cxrkd.search.study_options import study_with_options, typed_overrides
from cxrkd.search.study_source import with_study_source

DEFAULT_KIND, DEFAULT_WORKERS = "a10g", 8  # cluster.yaml: up to 8 g5.xlarge (one A10G each)


def build_plan(
    options: RunOptions,
    *,
    kind: str | None = None,
    workers: int = DEFAULT_WORKERS,
    probe: bool = False,
    table_path: str | None = None,
) -> dict:
    """The plan as one JSON-ready dict (what ``--json`` prints)."""
    from cxrkd.trainables.errors import CxrkdError

    if workers < 1:
        raise CxrkdError(f"--workers must be at least 1, got {workers}")
    options = with_study_source(options)  # STUDY may be a study file
    study = study_with_options(options)
    overrides = typed_overrides(study, options.overrides)
    stages = plan_counts(study, overrides)
    images = dataset_images(study, options.dataset)
    table = ThroughputTable.load(table_path)
    if probe:
        needs = Rates(None, "")
        add_costs(stages, images, needs, workers=workers, price=None)
        table, kind = probe_table(table, list(needs.used))
    else:
        kind = kind or DEFAULT_KIND
        table.check_kind(kind)
    price = table.price(kind)
    usd = price["usd_per_gpu_hour"] if price else None
    rates = Rates(table, kind)
    add_costs(stages, images, rates, workers=workers, price=usd)
    totals = {case: _sum_totals([s.totals[case] for s in stages]) for case in CASES}
    order = flop_levels(stages, images, workers)  # the order the driver hands trials out in
    for case in CASES:  # cells start when what they need is done, not at a stage's end
        wall = study_makespan(stages, case, workers, order)
        totals[case]["wall_hours"] = round(wall / 3600, 3)
    return {
        "study": study.name,
        "profile": study.profile.name,
        "only": options.only,
        "overrides": {k: str(v) for k, v in overrides.items()},
        "device": {
            "kind": kind,
            "source": table.origin,
            "probe": probe,
            "measured": table.measured(kind),
            "price": price,
        },
        "workers": workers,
        "startup_s": STARTUP_S,
        "images": asdict(images),
        "estimate_basis": None if table.measured(kind) else table.estimate,
        "asha": {
            "grace_period": study.profile.grace_period,
            "reduction_factor": study.profile.reduction_factor,
        },
        "rates": [
            {
                "model": s.label,
                "mode": m,
                "images_per_s": round(r.images_per_s, 2),
                "source": r.source,
                "measured": r.measured,
            }
            for (s, m), r in rates.used.items()
        ],
        "stages": [_stage_dict(s) for s in stages],
        "totals": totals,
    }


def _stage_dict(stage: StagePlan) -> dict:
    cells = []
    for c in stage.cells:
        d = asdict(c)
        d.pop("per_trial")
        d.pop("configs")
        d["epoch_s"] = round(c.epoch_s, 2)
        d["trial_overhead_s"] = round(c.trial_overhead_s, 2)
        cells.append(d)
    return {
        "name": stage.name,
        "role": stage.role,
        "after": stage.after,
        "cells": cells,
        "totals": stage.totals,
    }


def _sum_totals(parts: list[dict]) -> dict:
    out = {
        k: round(sum(p[k] for p in parts), 3)
        for k in ("trials", "trial_epochs", "device_hours", "wall_hours")
    }
    usd = [p["usd"] for p in parts]
    out["usd"] = None if any(u is None for u in usd) else round(sum(usd), 2)
    return out
