"""Trials and trial-epochs per cell of a plan (``cxrkd search plan``, :mod:`search.plan`).

The study's stages are walked the way the runner walks them: search cells are read as they
are (a student's teacher is the ``TeacherOf`` reference to its teacher cell), and final cells
are resolved against a stand-in state in which each searched cell "chose" its own pinned
values. No Ray, no Optuna study, no run folder, no import.

Counts per cell: trials (a Pareto front's size is only known after the search: 1 row to its
bound) and trial-epochs in three cases. ASHA (:class:`search.cells.CellScheduler`, one per
cell) stops a trial only at a rung below its last epoch; the first trial to reach a rung sees
nothing to compare with and goes on, so the **best** case is one trial per cell run out and
every other stopped at the first rung; **typical** is ASHA keeping exactly 1/reduction_factor
of the trials at each rung; **worst** is every trial running every epoch. Final cells are exact.
Each cell also keeps the configurations its trials may run, with the teacher each runs online,
for the cost (:mod:`search.plan_costs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrkd.search.cells import cell_epochs, cell_objectives
from cxrkd.search.stage import stage_epochs
from cxrkd.search.study_options import apply_overrides
from cxrkd.spaces.cell_space import expand_choices
from cxrkd.spaces.studies import (
    Cell,
    FinalCell,
    Role,
    SearchCell,
    Study,
    StudyState,
    TeacherOf,
    resolve,
)
from cxrkd.trainables.config import TrainConfig
from cxrkd.trainables.kd import LAYOUTS, get_kd, layout_of, use_teacher_cache

CASES = ("best", "typical", "worst")
# Objectives fixed by the model alone: a Pareto front of (quality, these) holds at most one
# configuration per model (the best of each).
MODEL_COSTS = {"params", "flops"}


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
    # The planned cells it waits for (its teacher cell, the cell whose choice it re-trains):
    # the driver starts it as soon as they are done (search.dependencies), not at a stage end.
    needs: tuple[str, ...] = ()


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
    state = StudyState()  # what the cells choose: filled below, as the runner does
    searched: dict[str, SearchCell] = {}
    stages: list[StagePlan] = []
    planned: set[str] = set()
    for stage in study.stages:
        chosen_of: dict[str, str] = {}  # a resolved final cell -> the cell it re-trains
        cells = []
        for c in stage.cells:
            for r in resolve(c, state) if isinstance(c, FinalCell) else (c,):
                cells.append(r)
                if isinstance(c, FinalCell):
                    chosen_of[r.key] = c.of
        cells = apply_overrides(cells, overrides)
        if not cells:  # --only selected none: the runner skips the stage
            continue
        max_t = stage_epochs(cells, default=int(study.profile.fixed["epochs"]))
        plans = [
            _cell_plan(study, stage.early_stopping, c, max_t, searched, state.best) for c in cells
        ]
        known = set(planned)
        for plan, cell in zip(plans, cells, strict=True):
            waits = (*cell.teachers, *((chosen_of[cell.key],) if cell.key in chosen_of else ()))
            # A cell --only left out (or a teacher pinned by --set) is not waited for.
            plan.needs = tuple(k for k in dict.fromkeys(waits) if k in known)
            if stage.role == Role.TEACHER:  # a later teacher may be distilled from this one
                known.add(cell.key)
        planned.update(c.key for c in cells)
        for cell in cells:
            if isinstance(cell, SearchCell):
                searched[cell.key] = cell
            if stage.role != Role.FINAL:
                state.best[cell.key] = variants(cell)[0]
        after = stages[-1].name if stages else None
        stages.append(StagePlan(stage.name, stage.role.value, after, plans))
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
    if isinstance(path, TeacherOf) and teacher_online(config):
        return chosen[path.cell]
    return None


def config_value(config: dict, name: str):
    """``config[name]``, else the default of that ``TrainConfig`` field."""
    return config.get(name, TrainConfig.__dataclass_fields__[name].default)


def teacher_online(config: dict) -> bool:
    """Whether a KD trial runs its teacher every step (augmented views, a KD loss whose
    targets cannot be cached such as one_to_one's every block or a CNN stage's map, or
    ``teacher_cache=off``) instead of reading cached outputs: the trial's own rule
    (:func:`trainables.kd.use_teacher_cache`), on the loss of the method's head layout."""
    layout = layout_of(str(config.get("method")))
    if layout is None:
        return False
    approach = config.get("kd_approach", LAYOUTS[layout].default)
    cached = use_teacher_cache(
        get_kd(approach).on(layout),
        teacher_cache=config.get("teacher_cache", "auto"),
        augment=bool(config_value(config, "augment")),
    )
    return not cached
