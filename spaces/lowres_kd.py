"""Study ``lowres-kd``: the MLCAK paper (seeds/002) as a grid of searched cells.

Axes: ViT size (teacher = student, as in the paper; cross-size pairs can be added), the
student's low resolution, and the KD approach (by default the paper's four: the losses of
:mod:`trainables.kd` declared ``in_paper``; ``Grid.approaches`` may name any registered one).
Stages: one high-resolution ``vit_mtl`` teacher per size (registered once, reused by every
student) -> side by side: ``vit_mtl`` at each low
resolution (the paper's Table 1) and ``kd_vit`` for every (size, resolution, approach) (its
Table 2), each cell with its own Optuna study and ASHA -> every cell's chosen configuration
re-trained on several seeds and tested. Searched per cell: lr, weight decay, and what the
cell's KD loss reads (``spaces/kd_vit.py``): alpha, beta, gamma, or T for vanilla KD.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrkd.spaces.studies import (
    FixedCell,
    PivotSpec,
    Profile,
    SearchCell,
    Study,
    StudyState,
    final_cells,
    kd_stages,
    register_study,
    registered,
)
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.kd import kd_names, paper_approaches

SIZES = {
    "tiny": ("vit_tiny_patch16_224", "ViT-Tiny"),
    "small": ("vit_small_patch16_224", "ViT-Small"),
    "base": ("vit_base_patch16_224", "ViT-Base"),
}
APPROACHES = paper_approaches()  # vanilla, last_block, one_to_one, mlcak
TASKS = (("T1 (MLCT)", "test_auroc_mlct"), ("T2 (MCCT)", "test_auroc_mcct"))
FINDING_METRIC = "test_auroc_{finding}"  # one column per finding (PivotSpec.per_finding)
HR_NOTE = (
    "'HR teacher (distilled from)' is the registered teacher checkpoint every student of that "
    "size distilled from: one model, so no ± (its CI covers test images only). 'HR (teacher "
    "config, re-trained)' is that configuration re-trained on the final stage's seeds: other "
    "models than the students' teacher, ± over those seeds."
)
KD_KEYS = ["lr", "weight_decay", "alpha", "beta", "gamma", "temperature"]


@dataclass(frozen=True)
class Grid:
    sizes: tuple[str, ...]  # teacher = student size
    # The student sees img_size // factor px: the paper's 224 -> 112/56/28 is (2, 4, 8). Ratios,
    # not pixels, so `--set img_size=...` keeps the paper's 8:4:2:1 (a small rehearsal at 32 px
    # runs the same cells at 16/8/4 px).
    factors: tuple[int, ...]
    approaches: tuple[str, ...] = APPROACHES
    pairs: tuple[tuple[str, str], ...] = ()  # extra (teacher, student) cross-size pairs
    patch_size: int = 0  # 0: the timm model's own (demo variants shrink it)
    depth: int = 0

    def __post_init__(self) -> None:
        if not self.factors or any(int(f) != f or f < 2 for f in self.factors):
            raise CxrkdError(
                f"low-resolution factors must be whole numbers >= 2, got {self.factors}"
            )
        unknown = [a for a in self.approaches if a not in kd_names()]
        if unknown or not self.approaches:
            raise CxrkdError(
                f"unknown KD approach(es) {unknown} in the grid; known (trainables/kd): "
                f"{list(kd_names())}"
            )

    def lows(self, img_size: int) -> tuple[int, ...]:
        """The students' resolutions in px at the teacher's ``img_size``."""
        lows = tuple(img_size // f for f in self.factors)
        if min(lows) < 1:
            raise CxrkdError(
                f"img_size {img_size} is too small for low-resolution factors {self.factors} "
                f"(the smallest view would be {min(lows)} px); raise --set img_size"
            )
        return lows


PROFILES = {
    # CPU-sized: tiny ViTs at 64 px keeping the paper's 8:4:2:1 ratio (224 -> 112/56/28).
    "demo": Profile(
        name="demo",
        fixed={
            "img_size": 64,
            "epochs": 4,
            "pretrained": False,
            "steps_per_epoch": 20,
            "batch_size": 32,
            "augment": False,
            "warmup_epochs": 1.0,
        },
        samples=2,
        teacher_samples=2,
        seeds=2,
        grace_period=2,
        # Tiny ViTs from scratch: above ~2e-3 they collapse to the label priors in this budget.
        bounds={"lr": (5e-4, 2e-3)},
        device_hint="CPU",
        # The teachers get 300 steps (val AUROC MCCT ~0.7 on the phantom, under 2 minutes on a
        # 2-core CPU); with the students' 80 they stay near chance.
        teacher_fixed={"epochs": 6, "steps_per_epoch": 50},
        grid={"grid": Grid(sizes=("tiny",), factors=(2, 4, 8), patch_size=8, depth=4)},
    ),
    # The paper: 224 px, batch 64, AdamW around lr 5e-4 with cosine annealing, 100 epochs.
    "paper": Profile(
        name="paper",
        fixed={
            "img_size": 224,
            "epochs": 100,
            "pretrained": True,
            "steps_per_epoch": 0,
            "batch_size": 64,
            "augment": True,
            "warmup_epochs": 5.0,
            "schedule": "cosine",
            "optimizer": "adamw",
        },
        samples=16,
        teacher_samples=6,
        seeds=3,
        grace_period=10,
        reduction_factor=3,
        bounds={"lr": (1e-4, 1e-3)},
        device_hint="GPU cluster",
        grid={"grid": Grid(sizes=("tiny", "small", "base"), factors=(2, 4, 8))},
    ),
}


def _vit(base: dict, grid: Grid, size: str) -> dict:
    return {**base, "model": SIZES[size][0], "patch_size": grid.patch_size, "depth": grid.depth}


def teacher_key(size: str) -> str:
    return f"teacher_{size}"


def base_key(size: str, low: int) -> str:
    return f"base_{size}_{low}px"


def kd_key(teacher: str, student: str, low: int, approach: str) -> str:
    pair = student if teacher == student else f"{teacher}-{student}"
    return f"kd_{pair}_{low}px_{approach}"


def _pairs(grid: Grid) -> list[tuple[str, str]]:
    return [(s, s) for s in grid.sizes] + list(grid.pairs)


def teacher_cells(profile: Profile, sizes: list[str]) -> list[SearchCell]:
    """One high-resolution ``vit_mtl`` teacher cell per size. Shared with ``lowres-kd-open``:
    the same profile gives the same teacher configurations, so runs of both studies on one
    storage find each other's teachers in the registry."""
    grid: Grid = profile.grid["grid"]
    return [
        SearchCell(
            teacher_key(size), "vit_mtl",
            {**_vit(dict(profile.fixed), grid, size), **profile.teacher_fixed,
             "method": "vit_mtl", "low_res": 0},
            profile.teacher_samples, profile.bounds,
        )
        for size in sizes
    ]  # fmt: skip


@register_study("lowres-kd", PROFILES)
def lowres_kd(profile: Profile) -> Study:
    grid: Grid = profile.grid["grid"]
    base = dict(profile.fixed)
    lows = grid.lows(base["img_size"])
    n, b = profile.samples, profile.bounds
    teacher_sizes = list(dict.fromkeys(t for t, _ in _pairs(grid)))

    def teachers(state: StudyState) -> list:
        return teacher_cells(profile, teacher_sizes)

    def students(state: StudyState) -> list:
        cells = [
            SearchCell(
                base_key(size, low), "vit_mtl",
                {**_vit(base, grid, size), "method": "vit_mtl", "low_res": low}, n, b,
            )
            for size in grid.sizes
            for low in lows
        ]  # fmt: skip
        for t, s in _pairs(grid):
            for low in lows:
                for approach in grid.approaches:
                    fixed = {
                        **_vit(base, grid, s),
                        "method": "kd_vit",
                        "low_res": low,
                        "kd_approach": approach,
                        "teacher_path": state.teacher(teacher_key(t)),
                    }
                    cells.append(SearchCell(kd_key(t, s, low, approach), "kd_vit", fixed, n, b))
        return cells

    def final(state: StudyState) -> list[FixedCell]:
        keys = [c.key for c in teachers(state)] + [c.key for c in students(state)]
        return final_cells(state, keys, profile.seeds)

    # Two high-resolution columns: the registered teacher the students distilled from (one
    # model), and its configuration re-trained on the final stage's seeds.
    hr = f"HR {base['img_size']} px (teacher config, re-trained)"
    hr_teacher = f"HR {base['img_size']} px teacher (distilled from)"
    table1 = [
        (SIZES[size][1], task, col, cell, metric)
        for size in grid.sizes
        for task, metric in TASKS
        for col, cell in [(hr_teacher, registered(teacher_key(size))), (hr, teacher_key(size))]
        + [(f"{low} px", base_key(size, low)) for low in lows]
    ]
    table2 = [
        (pair_name(t, s), approach, task, f"{low} px", kd_key(t, s, low, approach), metric)
        for t, s in _pairs(grid)
        for approach in grid.approaches
        for task, metric in TASKS
        for low in lows
    ]
    kd_cells = [kd_key(t, s, low, a) for t, s in _pairs(grid) for low in lows
                for a in grid.approaches]  # fmt: skip
    # Each KD cell is tested against vit_mtl without KD at the student's size and resolution.
    baselines = {kd_key(t, s, low, a): base_key(s, low) for t, s in _pairs(grid)
                 for low in lows for a in grid.approaches}  # fmt: skip
    findings = [((SIZES[size][1], hr_teacher, "teacher"), registered(teacher_key(size)))
                for size in grid.sizes]  # fmt: skip
    findings += [((SIZES[size][1], hr, "no KD"), teacher_key(size)) for size in grid.sizes]
    findings += [((SIZES[size][1], f"{low} px", "no KD"), base_key(size, low))
                 for size in grid.sizes for low in lows]  # fmt: skip
    findings += [((pair_name(t, s), f"{low} px", a), kd_key(t, s, low, a))
                 for t, s in _pairs(grid) for low in lows
                 for a in grid.approaches]  # fmt: skip
    return lowres_study(
        "lowres-kd",
        profile,
        teachers=teachers,
        search=students,
        final=final,
        tables=[
            PivotSpec(
                title="Table 1: AUROC of ViTs without KD at high and low resolution (test)",
                stem="lowres_table1",
                row_names=("ViT", "task"),
                entries=[((v, t), col, cell, m) for v, t, col, cell, m in table1],
                note=HR_NOTE,
            ),
            PivotSpec(
                title="Table 2: AUROC of low-resolution students by KD approach (test)",
                stem="lowres_table2",
                row_names=("teacher -> student", "approach", "task"),
                entries=[((p, a, t), col, cell, m) for p, a, t, col, cell, m in table2],
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
        ],
    )


def lowres_study(name: str, profile: Profile, *, teachers, search, final, tables) -> Study:
    """Teachers -> search -> final on multi-label data (the findings phantom by default);
    configurations are chosen by ``val_auroc_mean``, which weighs both tasks equally."""
    return Study(
        name=name,
        task="multilabel",
        default_dataset="phantom-findings",
        default_import=("phantom", "findings", {}),
        stages=kd_stages(teachers, search, final),
        tables=tables,
        profile=profile,
        metric="val_auroc_mean",
    )


def pair_name(teacher: str, student: str) -> str:
    return f"{SIZES[teacher][1]} -> {SIZES[student][1]}"
