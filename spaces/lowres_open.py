"""Study ``lowres-kd-open``: the MLCAK question as one Optuna study over everything (issue #4).

Where ``lowres-kd`` fixes a grid (one cell per size, resolution and KD approach), this study
searches student size, low resolution and KD approach (every loss registered in
:mod:`trainables.kd` for kd_vit's heads, not only the paper's four) together with the KD
weights, temperature, lr and weight decay, in one cell: ``model`` is a choice whose value
brings the ``teacher_path`` of that size's registered teacher (teacher = student size, as in
the paper).
Stages: the same high-resolution ``vit_mtl`` teachers as ``lowres-kd`` (one per size, the
same cells, so both studies share them on one storage) -> the open search -> its chosen
configurations re-trained on seeds and tested.

Objectives (``Profile.objectives``, ``cxrkd search run lowres-kd-open --objective ...``): one
validation AUROC alone is searched with ASHA and re-trains its best configuration; a quality
and a cost (default: ``val_auroc_mcct`` and ``params``) make a multi-objective (MOTPE) search
without early stopping, whose Pareto front of validation results is re-trained and tested.
The student always runs at the model input size (the low-resolution view is upsampled back,
paper Fig. 1), so its cost depends on its size only and the front holds at most one
configuration per size. ``params`` is exact; ``latency_ms`` is measured on the trial's own
device while other trials run beside it (noisy on a shared CPU), so it is the option, not
the default.
"""

from __future__ import annotations

import dataclasses

from cxrkd.spaces import lowres_kd
from cxrkd.spaces.lowres_kd import SIZES, Grid, grid_of, lowres_study, teacher_cells, teacher_key
from cxrkd.spaces.studies import (
    Profile,
    SearchCell,
    Study,
    TeacherOf,
    final_cells,
    parse_objectives,
    register_study,
)
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.kd import kd_names

OPEN = "open"  # the open search cell's key
DEFAULT_OBJECTIVES = ("val_auroc_mcct", "params")

_GRID_DEMO, _GRID_PAPER = lowres_kd.PROFILES["demo"], lowres_kd.PROFILES["paper"]
PROFILES = {
    # Two sizes, so the search has a size to choose: ViT-Tiny and ViT-Small cut to 2 blocks
    # of 8 px patches at 32 px (16 tokens), students at 16 and 8 px; 12 trials of 3 short
    # epochs (teachers: 180 steps). A few minutes on 2 CPU cores.
    "demo": dataclasses.replace(
        _GRID_DEMO,
        fixed={**_GRID_DEMO.fixed, "img_size": 32, "epochs": 3, "steps_per_epoch": 8},
        samples=12,
        teacher_samples=1,
        grace_period=1,
        teacher_fixed={"epochs": 6, "steps_per_epoch": 30},  # see lowres-kd's demo
        grid=Grid(
            sizes=("tiny", "small"),
            factors=(2, 4),
            approaches=kd_names("mtl"),
            patch_size=8,
            depth=2,
        ),
        objectives=DEFAULT_OBJECTIVES,
    ),
    # The paper's sizes, resolutions and recipe (lowres-kd's paper profile, so the teachers
    # are the grid's), every registered approach; 64 trials over the whole space instead of
    # 16 in each grid cell.
    "paper": dataclasses.replace(
        _GRID_PAPER,
        samples=64,
        objectives=DEFAULT_OBJECTIVES,
        grid=dataclasses.replace(grid_of(_GRID_PAPER), approaches=kd_names("mtl")),
    ),
}


def open_cell(profile: Profile) -> SearchCell:
    """The open search: size (with its teacher), resolution and KD approach as choices, the
    ``kd_vit`` space for the rest."""
    grid = grid_of(profile)
    fixed = {
        **profile.fixed,
        "method": "kd_vit",
        "patch_size": grid.patch_size,
        "depth": grid.depth,
    }
    choices = {
        "model": {SIZES[s][0]: {"teacher_path": TeacherOf(teacher_key(s))} for s in grid.sizes},
        "low_res": {low: {} for low in grid.lows(profile.fixed["img_size"])},
        "kd_approach": {a: {} for a in grid.approaches},
    }
    objectives = parse_objectives(profile.objectives)
    return SearchCell(OPEN, "kd_vit", fixed, profile.samples, profile.bounds, choices, objectives)


@register_study("lowres-kd-open", PROFILES)
def lowres_kd_open(profile: Profile) -> Study:
    grid = grid_of(profile)
    if grid.pairs:
        raise CxrkdError("lowres-kd-open pairs each student with a teacher of its own size")
    # The teachers are chosen by val_auroc_mean, as in lowres-kd; the open cell by its own
    # objectives, and with several of them the final stage re-trains its whole Pareto front
    # (spaces.study_cells.resolve).
    return lowres_study(
        "lowres-kd-open",
        profile,
        teachers=teacher_cells(profile, list(grid.sizes)),
        search=[open_cell(profile)],
        final=final_cells([OPEN], profile.seeds),
    )
