"""The tables of studies ``lowres-kd`` (the MLCAK paper's Tables 1 and 2, and AUROC per
finding) and ``lowres-kd-open`` (its open search's Pareto front); the studies are in
``spaces.lowres_kd`` and ``spaces.lowres_open``."""

from __future__ import annotations

from cxrkd.results.study_tables import register_tables
from cxrkd.results.table_specs import ParetoSpec, PivotSpec, registered
from cxrkd.spaces.lowres_kd import SIZES, base_key, grid_of, grid_pairs, kd_key, teacher_key
from cxrkd.spaces.lowres_open import OPEN
from cxrkd.spaces.studies import Study, parse_objectives

TASKS = (("T1 (MLCT)", "test_auroc_mlct"), ("T2 (MCCT)", "test_auroc_mcct"))
FINDING_METRIC = "test_auroc_{finding}"  # one column per finding (PivotSpec.per_finding)
HR_NOTE = (
    "'HR teacher (distilled from)' is the registered teacher checkpoint every student of that "
    "size distilled from: one model, so no ± (its CI covers test images only). 'HR (teacher "
    "config, re-trained)' is that configuration re-trained on the final stage's seeds: other "
    "models than the students' teacher, ± over those seeds."
)
KD_KEYS = ["lr", "weight_decay", "alpha", "beta", "gamma", "temperature"]
OPEN_KEYS = ["model", "low_res", "kd_approach", *KD_KEYS]  # what the open search chose


def pair_name(teacher: str, student: str) -> str:
    return f"{SIZES[teacher][1]} -> {SIZES[student][1]}"


@register_tables("lowres-kd")
def lowres_tables(study: Study) -> list[PivotSpec]:
    grid = grid_of(study.profile)
    img_size = study.profile.fixed["img_size"]
    lows = grid.lows(img_size)
    pairs = grid_pairs(grid)
    # Two high-resolution columns: the registered teacher the students distilled from (one
    # model), and its configuration re-trained on the final stage's seeds.
    hr = f"HR {img_size} px (teacher config, re-trained)"
    hr_teacher = f"HR {img_size} px teacher (distilled from)"
    table1 = [
        ((SIZES[size][1], task), col, cell, metric)
        for size in grid.sizes
        for task, metric in TASKS
        for col, cell in [(hr_teacher, registered(teacher_key(size))), (hr, teacher_key(size))]
        + [(f"{low} px", base_key(size, low)) for low in lows]
    ]
    table2 = [
        ((pair_name(t, s), approach, task), f"{low} px", kd_key(t, s, low, approach), metric)
        for t, s in pairs
        for approach in grid.approaches
        for task, metric in TASKS
        for low in lows
    ]
    kd_cells = [kd_key(t, s, low, a) for t, s in pairs for low in lows for a in grid.approaches]
    # Each KD cell is tested against vit_mtl without KD at the student's size and resolution.
    baselines = {kd_key(t, s, low, a): base_key(s, low) for t, s in pairs
                 for low in lows for a in grid.approaches}  # fmt: skip
    findings = [((SIZES[size][1], hr_teacher, "teacher"), registered(teacher_key(size)))
                for size in grid.sizes]  # fmt: skip
    findings += [((SIZES[size][1], hr, "no KD"), teacher_key(size)) for size in grid.sizes]
    findings += [((SIZES[size][1], f"{low} px", "no KD"), base_key(size, low))
                 for size in grid.sizes for low in lows]  # fmt: skip
    findings += [((pair_name(t, s), f"{low} px", a), kd_key(t, s, low, a))
                 for t, s in pairs for low in lows for a in grid.approaches]  # fmt: skip
    return [
        PivotSpec(
            title="Table 1: AUROC of ViTs without KD at high and low resolution (test)",
            stem="lowres_table1",
            row_names=("ViT", "task"),
            entries=table1,
            note=HR_NOTE,
        ),
        PivotSpec(
            title="Table 2: AUROC of low-resolution students by KD approach (test)",
            stem="lowres_table2",
            row_names=("teacher -> student", "approach", "task"),
            entries=table2,
            configs={cell: KD_KEYS for cell in kd_cells},
            baselines=baselines,
        ),
        PivotSpec(
            title="Per-finding AUROC (T1, MLCT) of every final model (test)",
            stem="lowres_findings",
            row_names=("ViT", "resolution", "approach"),
            entries=[(row, "", cell, FINDING_METRIC) for row, cell in findings],
            baselines=baselines,
            per_finding=True,
            note=HR_NOTE,
        ),
    ]


def _open_title(objectives: tuple[tuple[str, str], ...]) -> str:
    if len(objectives) == 1:
        return f"Open search: the configuration best in {objectives[0][0]} (test)"
    names = " vs ".join(name for name, _ in objectives)
    return f"Open search: Pareto front of {names} on validation, re-trained and tested"


@register_tables("lowres-kd-open")
def lowres_open_tables(study: Study) -> list[ParetoSpec]:
    objectives = parse_objectives(study.profile.objectives)
    return [
        ParetoSpec(
            title=_open_title(objectives),
            stem="lowres_open_front",
            stage="search",
            cell=OPEN,
            objectives=objectives,
            configs=OPEN_KEYS,
        )
    ]
