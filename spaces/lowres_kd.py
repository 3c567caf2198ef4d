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
    Profile,
    SearchCell,
    Study,
    StudyGrid,
    TeacherOf,
    final_cells,
    kd_stages,
    register_study,
)
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.kd import kd_names, paper_approaches

SIZES = {
    "tiny": ("vit_tiny_patch16_224", "ViT-Tiny"),
    "small": ("vit_small_patch16_224", "ViT-Small"),
    "base": ("vit_base_patch16_224", "ViT-Base"),
}
APPROACHES = paper_approaches()  # vanilla, last_block, one_to_one, mlcak


@dataclass(frozen=True)
class Grid(StudyGrid):
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
        unknown = [s for s in self.sizes if s not in SIZES]
        if unknown or not self.sizes:
            raise CxrkdError(f"unknown ViT size(s) {unknown} in the grid; known: {list(SIZES)}")
        bad = [p for p in self.pairs if len(p) != 2 or not set(p) <= set(SIZES)]
        if bad:
            raise CxrkdError(f"grid pairs must be (teacher, student) sizes of {list(SIZES)}: {bad}")
        if not self.factors or any(int(f) != f or f < 2 for f in self.factors):
            raise CxrkdError(
                f"low-resolution factors must be whole numbers >= 2, got {self.factors}"
            )
        known = kd_names("mtl")  # the losses kd_vit's two heads can take
        unknown = [a for a in self.approaches if a not in known]
        if unknown or not self.approaches:
            raise CxrkdError(
                f"unknown KD approach(es) {unknown} in the grid; the ViT students' KD losses "
                f"(trainables/kd, layout mtl): {list(known)}"
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
        grid=Grid(sizes=("tiny",), factors=(2, 4, 8), patch_size=8, depth=4),
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
        grid=Grid(sizes=("tiny", "small", "base"), factors=(2, 4, 8)),
    ),
}


def grid_of(profile: Profile) -> Grid:
    """The profile's ViT grid (a lowres profile without one is a mistake in the profile)."""
    if not isinstance(profile.grid, Grid):
        raise CxrkdError(f"profile {profile.name!r} has no ViT grid (lowres_kd.Grid)")
    return profile.grid


def _vit(base: dict, grid: Grid, size: str) -> dict:
    return {**base, "model": SIZES[size][0], "patch_size": grid.patch_size, "depth": grid.depth}


def teacher_key(size: str) -> str:
    return f"teacher_{size}"


def base_key(size: str, low: int) -> str:
    return f"base_{size}_{low}px"


def kd_key(teacher: str, student: str, low: int, approach: str) -> str:
    pair = student if teacher == student else f"{teacher}-{student}"
    return f"kd_{pair}_{low}px_{approach}"


def grid_pairs(grid: Grid) -> list[tuple[str, str]]:
    """``(teacher size, student size)`` of every KD cell: the same size, then cross-size."""
    return [(s, s) for s in grid.sizes] + list(grid.pairs)


def teacher_cells(profile: Profile, sizes: list[str]) -> list[SearchCell]:
    """One high-resolution ``vit_mtl`` teacher cell per size. Shared with ``lowres-kd-open``:
    the same profile gives the same teacher configurations, so runs of both studies on one
    storage find each other's teachers in the registry."""
    grid = grid_of(profile)
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
    grid = grid_of(profile)
    base = dict(profile.fixed)
    lows = grid.lows(base["img_size"])
    n, b = profile.samples, profile.bounds
    teachers = teacher_cells(profile, list(dict.fromkeys(t for t, _ in grid_pairs(grid))))
    students = [
        SearchCell(
            base_key(size, low), "vit_mtl",
            {**_vit(base, grid, size), "method": "vit_mtl", "low_res": low}, n, b,
        )
        for size in grid.sizes
        for low in lows
    ]  # fmt: skip
    for t, s in grid_pairs(grid):
        for low in lows:
            for approach in grid.approaches:
                fixed = {
                    **_vit(base, grid, s),
                    "method": "kd_vit",
                    "low_res": low,
                    "kd_approach": approach,
                    "teacher_path": TeacherOf(teacher_key(t)),
                }
                students.append(SearchCell(kd_key(t, s, low, approach), "kd_vit", fixed, n, b))
    final = final_cells([c.key for c in teachers + students], profile.seeds)
    return lowres_study("lowres-kd", profile, teachers=teachers, search=students, final=final)


def lowres_study(name: str, profile: Profile, *, teachers, search, final) -> Study:
    """Teachers -> search -> final on multi-label data (the findings phantom by default);
    configurations are chosen by ``val_auroc_mean``, which weighs both tasks equally."""
    return Study(
        name=name,
        task="multilabel",
        default_dataset="phantom-findings",
        default_import=("phantom", "findings", {}),
        stages=kd_stages(teachers, search, final),
        profile=profile,
        metric="val_auroc_mean",
    )
