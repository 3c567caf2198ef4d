"""``cxrkd search plan``: what ``cxrkd search run`` would run, and its bill, before anything runs.

The study is built exactly as ``search run`` builds it (:func:`search.setup.study_with_options`:
profile, ``--set``, ``--num-samples``, ``--objective``, ``--only``), and its stages are walked
the way the runner walks them, with a stand-in state: each teacher cell "registers" a
reference to itself, each searched cell "chooses" its own pinned values. No Ray, no Optuna
study, no run folder, no import.

Counts per cell: trials (a Pareto front's size is only known after the search: 1 row to its
bound) and trial-epochs in three cases. ASHA (:class:`search.cells.CellScheduler`, one per
cell) stops a trial only at a rung below its last epoch; the first trial to reach a rung sees
nothing to compare with and goes on, so the **best** case is one trial per cell run out and
every other stopped at the first rung; **typical** is ASHA keeping exactly 1/reduction_factor
of the trials at each rung; **worst** is every trial running every epoch. Final cells are exact.

Cost: seconds per epoch from images per epoch (the dataset's splits, or a stated assumption)
over images/s (:mod:`search.plan_throughput`), plus a fixed start-up per trial; device-hours
(one device per trial) and dollars from the table's price; wall time by list-scheduling each
stage's trials over ``workers`` in the order the searcher hands them out, stage after stage.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import asdict, dataclass, field

import numpy as np

from search.cells import cell_epochs, cell_objectives
from search.plan_throughput import ModelSpec, Rate, ThroughputTable, probe_table
from search.run_state import RunOptions
from search.setup import SYNTHETIC_PROFILES, apply_overrides, study_with_options, typed_overrides
from search.stage import stage_epochs
from spaces.cell_space import expand_choices
from spaces.studies import Cell, SearchCell, Study, StudyState
from trainables.config import TrainConfig

CASES = ("best", "typical", "worst")
STARTUP_S = 30.0  # ASSUMED per trial: worker process, model, weights, teacher; not measured
DEFAULT_KIND, DEFAULT_WORKERS = "a10g", 8  # cluster.yaml: up to 8 g5.xlarge (one A10G each)
_REF = "<teacher-of:"
# Objectives fixed by the model alone: a Pareto front of (quality, these) holds at most one
# configuration per model (the best of each).
MODEL_COSTS = {"params", "flops"}
# Split sizes when no dataset store is named: what the profile is meant for.
ASSUMED_SPLITS = {
    "phantom": (
        {"train": 3750, "val": 500, "test": 750},
        "the built-in phantom (5,000 images; 15% test, 10% validation)",
    ),
    "binary": (
        {"train": 4700, "val": 530, "test": 624},
        "Kaggle chest_xray (about 5,230 train + val images, 10% validation; 624 test)",
    ),
    "multilabel": (
        {"train": 13500, "val": 1500, "test": 3000},
        "VinDr-CXR (15,000 training images, 10% validation; 3,000 test)",
    ),
}


@dataclass
class CellPlan:
    key: str
    kind: str  # "search" (Optuna + ASHA) or "fixed" (configs run as they are)
    trials: dict  # case -> trials
    epochs: int  # per trial, the most
    trial_epochs: dict  # case -> trial-epochs
    rungs: list[int]  # epochs at which ASHA may stop a trial; [] without early stopping
    rows: tuple[int, int] = (1, 1)  # a Pareto front's final rows: (fewest, most)
    epoch_s: float | None = None
    trial_overhead_s: float | None = None  # start-up (+ the test pass of a final trial)
    per_trial: dict = field(default_factory=dict, repr=False)  # case -> epochs of each trial
    # What its trials may run, for the cost: (config, its online teacher's config or None).
    configs: list = field(default_factory=list, repr=False)


@dataclass
class StagePlan:
    name: str
    role: str
    after: str | None  # the stage it waits for
    cells: list[CellPlan]
    totals: dict = field(default_factory=dict)  # case -> {trials, trial_epochs, hours, ...}


def asha_rungs(epochs: int, grace: int, reduction_factor: float) -> list[int]:
    """The epochs below ``epochs`` at which ASHA compares a trial (Ray's ``_Bracket``
    milestones for ``min_t = min(grace, epochs)``, ``max_t = epochs``, one bracket)."""
    min_t = min(grace, epochs)
    count = int(np.log(epochs / min_t) / np.log(reduction_factor) + 1)
    return sorted(m for m in (min_t * reduction_factor**k for k in range(count)) if m < epochs)


def typical_epochs(n: int, epochs: int, rungs: list[int], reduction_factor: float) -> list[int]:
    """Epochs of each of ``n`` trials, longest first, when each rung keeps 1/reduction_factor
    of the trials (at least one, which runs every epoch)."""
    kept = [max(1, round(n / reduction_factor ** (i + 1))) for i in range(len(rungs))]
    stops = [
        next((r for r, k in zip(rungs, kept, strict=True) if j >= k), epochs) for j in range(n)
    ]
    return stops


def _cases(per_trial: list[int], rows: tuple[int, int], rungs: list[int], rf: float) -> dict:
    fewest, most = per_trial * rows[0], per_trial * rows[1]
    if not rungs:
        return {"best": fewest, "typical": most, "worst": most}
    best = [fewest[0]] + [min(rungs[0], e) for e in fewest[1:]]
    kept = typical_epochs(len(most), max(most), rungs, rf)
    typical = [min(e, t) for e, t in zip(most, kept, strict=True)]
    return {"best": best, "typical": typical, "worst": most}


def variants(cell: Cell) -> list[dict]:
    """The configurations a cell's trials may have, as far as cost goes: a searched cell's
    pinned values per combination of its choices, or a fixed cell's configs."""
    if isinstance(cell, SearchCell):
        return [dict(c.fixed) for c in expand_choices(cell)]
    return [dict(c) for c in cell.configs]


def front_bound(cell: SearchCell) -> int:
    """The most configurations a multi-objective cell's Pareto front can hold."""
    costs = {name for name, _ in cell.objectives[1:]}
    if costs <= MODEL_COSTS:
        return len({v.get("model") for v in variants(cell)})
    return cell.num_samples


def plan_counts(study: Study, overrides: dict) -> list[StagePlan]:
    """Every stage ``search run`` would run, with its cells' trials and trial-epochs."""
    state = StudyState()  # what each stage hands on: filled below, as the runner does
    searched: dict[str, SearchCell] = {}
    stages: list[StagePlan] = []
    for stage in study.stages:
        cells = apply_overrides(stage.cells(state), overrides)
        if not cells:  # --only selected none: the runner skips the stage
            continue
        max_t = stage_epochs(cells, default=int(study.profile.fixed["epochs"]))
        plans = [
            _cell_plan(study, stage.early_stopping, c, max_t, searched, state.best) for c in cells
        ]
        for cell in cells:
            if stage.role == "teacher":
                state.teachers[cell.key] = f"{_REF}{cell.key}>"
            if isinstance(cell, SearchCell):
                searched[cell.key] = cell
                state.best[cell.key] = variants(cell)[0]
        after = stages[-1].name if stages else None
        stages.append(StagePlan(stage.name, stage.role, after, plans))
    return stages


def _cell_plan(
    study: Study, early_stopping: bool, cell: Cell, max_t: int, searched: dict, chosen: dict
) -> CellPlan:
    profile = study.profile
    configs, rows = variants(cell), (1, 1)
    if isinstance(cell, SearchCell):
        per_trial = cell_epochs(cell, default=max_t) * cell.num_samples
    else:
        per_trial = cell_epochs(cell, default=max_t)
        source = searched.get(cell.key)
        if source is not None and len(source.objectives) > 1:
            rows = (1, front_bound(source))
        if source is not None and len(variants(source)) > 1:  # any of its choices may win
            configs = [{**v, "evaluate_test": True} for v in variants(source)]
    single = len(cell_objectives(cell, metric=study.metric, mode=study.mode)) == 1
    rf = profile.reduction_factor
    early = early_stopping and single and bool(per_trial)
    rungs = asha_rungs(max(per_trial), profile.grace_period, rf) if early else []
    cases = _cases(per_trial, rows, rungs, rf)
    return CellPlan(
        key=cell.key,
        kind="search" if isinstance(cell, SearchCell) else "fixed",
        trials={c: len(es) for c, es in cases.items()},
        epochs=max(per_trial),
        trial_epochs={c: round(sum(es), 1) for c, es in cases.items()},
        rungs=rungs,
        rows=rows,
        per_trial=cases,
        configs=[(c, _teacher_of(c, chosen)) for c in configs],
    )


def _teacher_of(config: dict, chosen: dict) -> dict | None:
    """The configuration of the teacher a KD config runs online (None: no teacher, or its
    outputs are cached)."""
    path = config.get("teacher_path")
    if isinstance(path, str) and path.startswith(_REF) and teacher_online(config):
        return chosen[path[len(_REF) : -1]]
    return None


@dataclass(frozen=True)
class Images:
    splits: dict[str, int]
    source: str
    assumed: bool


def dataset_images(study: Study, dataset: str | None) -> Images:
    """Split sizes from the named store (or the demo's built-in one when imported), else the
    assumption for what the profile is meant for."""
    from trainables.data.store import DatasetStore, datasets_dir

    name = dataset
    synthetic = study.profile.name in SYNTHETIC_PROFILES
    if name is None and synthetic and (datasets_dir() / study.default_dataset).exists():
        name = study.default_dataset
    if name is not None:
        manifest = DatasetStore.open(name).manifest
        splits = {k: int(v) for k, v in manifest.splits.items()}
        return Images(splits, f"dataset {manifest.title}: {splits}", False)
    key = "phantom" if study.profile.name in SYNTHETIC_PROFILES else study.task
    splits, what = ASSUMED_SPLITS[key]
    return Images(dict(splits), f"ASSUMPTION (no --dataset): {what}: {splits}", True)


def _value(config: dict, name: str):
    return config.get(name, TrainConfig.__dataclass_fields__[name].default)


def epoch_images(config: dict, images: Images) -> int:
    """Training images per epoch: whole batches of the train split (the loop drops the last
    partial batch), capped by ``steps_per_epoch``."""
    n_train = images.splits.get("train", 0)
    batch = min(int(_value(config, "batch_size")), n_train) or 1
    steps = n_train // batch
    cap = int(_value(config, "steps_per_epoch"))
    return (min(steps, cap) if cap else steps) * batch


def teacher_online(config: dict) -> bool:
    """Whether a KD trial runs its teacher every step (augmented views, one_to_one's every
    block, or ``teacher_cache=off``) instead of reading cached outputs."""
    return (
        config.get("teacher_cache", "auto") == "off"
        or bool(_value(config, "augment"))
        or config.get("kd_approach") == "one_to_one"
    )


def config_seconds(
    config: dict, teacher: dict | None, images: Images, rates
) -> tuple[float, float]:
    """(seconds per epoch, seconds of the test pass) of one configuration whose teacher (if
    any) runs online."""
    spec = ModelSpec.of(config)
    n = epoch_images(config, images)
    frozen = bool(config.get("freeze"))  # backward through the head only: forward's rate
    seconds = n / rates(spec, "eval" if frozen else "train").images_per_s
    seconds += images.splits.get("val", 0) / rates(spec, "eval").images_per_s
    if teacher is not None:
        seconds += n / rates(ModelSpec.of(teacher), "eval").images_per_s
    test = 0.0
    if config.get("evaluate_test"):
        test = images.splits.get("test", 0) / rates(spec, "eval").images_per_s
    return seconds, test


class Rates:
    """Images/s per (model, mode) from a table for one device kind; remembers what it used."""

    def __init__(self, table: ThroughputTable | None, kind: str) -> None:
        self.table, self.kind, self.used = table, kind, {}

    def __call__(self, spec: ModelSpec, mode: str) -> Rate:
        if spec.low_res and not (self.table and self.table.has_row(spec, mode, self.kind)):
            # The student runs at the model input size whatever its view: the model's cost.
            spec = dataclasses.replace(spec, low_res=0)
        if (spec, mode) not in self.used:
            rate = Rate(1.0, "", False)
            if self.table is not None:
                rate = self.table.rate(spec, mode, self.kind)
            self.used[(spec, mode)] = rate
        return self.used[(spec, mode)]


def add_costs(stages: list[StagePlan], images: Images, rates, *, workers: int, price) -> None:
    for stage in stages:
        for cell in stage.cells:
            costs = [config_seconds(c, t, images, rates) for c, t in cell.configs]
            cell.epoch_s = sum(s for s, _ in costs) / len(costs)
            cell.trial_overhead_s = STARTUP_S + sum(t for _, t in costs) / len(costs)
        stage.totals = {case: _totals(stage, case, workers, price) for case in CASES}


def _totals(stage: StagePlan, case: str, workers: int, price: float | None) -> dict:
    durations = [
        [e * cell.epoch_s + cell.trial_overhead_s for e in cell.per_trial[case]]
        for cell in stage.cells
    ]
    busy = sum(sum(d) for d in durations)
    hours = busy / 3600
    return {
        "trials": sum(c.trials[case] for c in stage.cells),
        "trial_epochs": round(sum(c.trial_epochs[case] for c in stage.cells), 1),
        "device_hours": round(hours, 3),
        "wall_hours": round(makespan(durations, workers) / 3600, 3),
        "usd": None if price is None else round(hours * price, 2),
    }


def makespan(durations: list[list[float]], workers: int) -> float:
    """Seconds until the last trial ends: trials handed out round-robin over the cells (the
    searcher's order), each to the worker that frees up first."""
    order = [
        d[i] for i in range(max(map(len, durations), default=0)) for d in durations if i < len(d)
    ]
    free = [0.0] * max(1, min(workers, len(order)))
    for seconds in order:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free) if order else 0.0


def build_plan(
    options: RunOptions,
    *,
    kind: str | None = None,
    workers: int = DEFAULT_WORKERS,
    probe: bool = False,
    table_path: str | None = None,
) -> dict:
    """The plan as one JSON-ready dict (what ``--json`` prints)."""
    from trainables.errors import CxrkdError

    if workers < 1:
        raise CxrkdError(f"--workers must be at least 1, got {workers}")
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
