"""Study definitions as frozen data: stages of cells, profiles, and the study registry.

A study is a tuple of stages run in order (teachers first, then students and baselines, then
the final re-training on several seeds). A stage holds cells (:mod:`spaces.study_cells`); each
cell has its own Optuna study and is early-stopped only against trials of the same cell, and
every cell starts as soon as what it refers to is there (its teacher registered, the cell it
re-trains chosen). A study holds no code: it can be printed, compared and hashed, and reading
one (a check, a plan, the report) runs nothing. Its comparison tables are specified on the
results side (``results.study_tables``), which may read a study but not the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cxrkd.spaces.study_cells import (
    Cell,
    FinalCell,
    FixedCell,
    FrozenDict,
    SearchCell,
    StudyState,
    TeacherOf,
    freeze,
    front_key,
    front_keys,
    is_ready,
    resolve,
)
from cxrkd.trainables.config import TrainConfig, field_names
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.registry import Registry

__all__ = [
    "OBJECTIVES", "STUDIES", "Cell", "FinalCell", "FixedCell", "FrozenDict", "Profile", "Role",
    "SearchCell", "Stage", "Study", "StudyGrid", "StudyState", "TeacherOf", "final_cells",
    "freeze", "front_key", "front_keys", "get_study", "is_ready", "kd_stages",
    "parse_objectives", "register_study", "resolve", "searched_cells",
]  # fmt: skip

# What an open search may optimise, with its direction: validation AUROCs (the quality, first)
# and the student's cost, which every trial reports with its last epoch.
OBJECTIVES = {
    "val_auroc_mcct": "max",
    "val_auroc_mean": "max",
    "val_auroc_mlct": "max",
    "params": "min",
    "latency_ms": "min",
    "flops": "min",
}


def parse_objectives(names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["val_auroc_mcct", "params"]`` -> ``(("val_auroc_mcct", "max"), ("params", "min"))``.

    The first objective ranks trials where one configuration must be picked (ASHA, the best
    of a front), so it must be a quality metric, not a cost."""
    if not names:
        raise CxrkdError(f"no objective given; pick from {list(OBJECTIVES)}")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise CxrkdError(f"unknown objective(s) {unknown}; known objectives: {list(OBJECTIVES)}")
    if len(set(names)) < len(names):
        raise CxrkdError(f"objective named twice in {list(names)}")
    if OBJECTIVES[names[0]] != "max":
        quality = [n for n, mode in OBJECTIVES.items() if mode == "max"]
        raise CxrkdError(
            f"the first objective must be a validation AUROC ({quality}), got {names[0]!r}: "
            f"a cost alone picks the smallest model, e.g. --objective val_auroc_mcct "
            f"--objective {names[0]}"
        )
    return tuple((n, OBJECTIVES[n]) for n in names)


class Role(StrEnum):
    """What a stage's chosen configurations are for (the value is what records, plans and the
    dashboard store)."""

    TEACHER = "teacher"  # each cell's best trial is registered as a teacher
    SEARCH = "search"  # each cell's best configuration is handed on (to the final stage)
    FINAL = "final"  # chosen configurations re-trained on seeds and tested; nothing handed on


@dataclass(frozen=True)
class Stage:
    name: str
    role: Role
    cells: tuple[Cell, ...]
    early_stopping: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "role", Role(self.role))
        except ValueError:
            raise CxrkdError(
                f"stage {self.name!r}: unknown role {self.role!r}; roles: {[r.value for r in Role]}"
            ) from None
        if callable(self.cells) or not isinstance(self.cells, Sequence):
            raise CxrkdError(
                f"stage {self.name!r}: cells must be a tuple of cells (SearchCell, FixedCell, "
                f"FinalCell), got {type(self.cells).__name__}; what a cell takes from an earlier "
                "stage is a reference (TeacherOf(cell), FinalCell(key, of=cell, seeds=n))"
            )
        object.__setattr__(self, "cells", tuple(self.cells))
        wrong = [c for c in self.cells if not isinstance(c, SearchCell | FixedCell | FinalCell)]
        if wrong:
            raise CxrkdError(f"stage {self.name!r}: not a cell: {wrong[0]!r}")
        keys = [c.key for c in self.cells]
        if len(set(keys)) < len(keys):
            raise CxrkdError(f"stage {self.name!r}: a cell key is used twice in {keys}")


def final_cells(keys: Sequence[str], seeds: int) -> tuple[FinalCell, ...]:
    """Each cell's chosen configuration, re-trained with seeds 0..seeds-1 and tested."""
    return tuple(FinalCell(key, of=key, seeds=seeds) for key in keys)


def kd_stages(teachers: Sequence[Cell], search: Sequence[Cell], final: Sequence[Cell]):
    """Teachers -> search -> final re-training on seeds: the stages of both papers' studies
    (the final stage re-runs chosen configurations, so nothing is early-stopped there)."""
    return (
        Stage("teacher", Role.TEACHER, tuple(teachers)),
        Stage("search", Role.SEARCH, tuple(search)),
        Stage("final", Role.FINAL, tuple(final), early_stopping=False),
    )


@dataclass(frozen=True)
class StudyGrid:
    """Base of a study's own grid axes (a frozen dataclass per study, e.g.
    ``spaces.lowres_kd.Grid``), which validates its values when it is made."""


def _check_fixed(profile: str, what: str, values: Mapping) -> None:
    unknown = sorted(set(values) - field_names(TrainConfig))
    if unknown:
        raise CxrkdError(
            f"profile {profile!r}: {what} holds {unknown}, which are not TrainConfig fields "
            f"({sorted(field_names(TrainConfig))})"
        )


def _is_range(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and value[0] < value[1]


@dataclass(frozen=True)
class Profile:
    """Sizes of a study: the fixed trial settings and the search budget."""

    name: str
    fixed: Mapping  # TrainConfig values every trial gets (img_size, epochs, pretrained, ...)
    samples: int  # trials per search cell
    teacher_samples: int
    seeds: int  # final re-training seeds per row
    grace_period: int  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2
    bounds: Mapping = FrozenDict()  # search ranges sized to the budget: name -> (low, high)
    grid: StudyGrid | None = None  # study-specific axes (e.g. lowres-kd's Grid)
    # OBJECTIVES names of a study's open search (first: the quality); () for studies without
    # one, which refuse `--objective`.
    objectives: tuple[str, ...] = ()
    device_hint: str = ""  # where the profile is meant to run, for the tables' caption
    # TrainConfig values a study's teacher cells get on top of ``fixed``: a demo may train its
    # teachers longer than its students (a teacher that has not learned has nothing to distil).
    teacher_fixed: Mapping = FrozenDict()

    def __post_init__(self) -> None:
        for name in ("fixed", "bounds", "objectives", "teacher_fixed"):
            object.__setattr__(self, name, freeze(getattr(self, name)))
        _check_fixed(self.name, "fixed", self.fixed)
        _check_fixed(self.name, "teacher_fixed", self.teacher_fixed)
        counts = {"samples": self.samples, "teacher_samples": self.teacher_samples,
                  "seeds": self.seeds, "grace_period": self.grace_period}  # fmt: skip
        low = {k: v for k, v in counts.items() if not isinstance(v, int) or v < 1}
        if low or not isinstance(self.reduction_factor, int) or self.reduction_factor < 2:
            raise CxrkdError(
                f"profile {self.name!r}: {low or {'reduction_factor': self.reduction_factor}} "
                "(counts must be whole numbers >= 1, reduction_factor >= 2)"
            )
        bad = {k: v for k, v in self.bounds.items() if not _is_range(v)}
        if bad:
            raise CxrkdError(f"profile {self.name!r}: bounds {bad} are not (low, high) ranges")
        if self.grid is not None and not isinstance(self.grid, StudyGrid):
            raise CxrkdError(
                f"profile {self.name!r}: grid must be a study's grid dataclass (a StudyGrid, "
                f"e.g. lowres_kd.Grid(sizes=..., factors=...)), not {type(self.grid).__name__}"
            )
        if self.objectives:
            parse_objectives(self.objectives)

    @property
    def banner(self) -> str:
        from cxrkd.trainables.weights import pretrained_source  # timm and torch: only when asked

        f = self.fixed
        t = {**f, **self.teacher_fixed}
        weights = pretrained_source(f.get("weights_dir")) if f["pretrained"] else ""
        weights = weights or "no pretrained weights"
        if f["pretrained"] and not t["pretrained"]:
            weights += ", teachers from scratch"
        steps = f" of {f['steps_per_epoch']} steps" if f.get("steps_per_epoch") else ""
        teachers = ""
        if (t["epochs"], t.get("steps_per_epoch")) != (f["epochs"], f.get("steps_per_epoch")):
            t_steps = f" of {t['steps_per_epoch']} steps" if t.get("steps_per_epoch") else ""
            teachers = f" (teachers {t['epochs']} epochs{t_steps})"
        return (
            f"{self.name} scale ({self.device_hint}): {f['img_size']} px, {f['epochs']} epochs"
            f"{steps}{teachers}, {weights}, {self.samples} trials per cell, {self.seeds} seeds"
        )


@dataclass(frozen=True)
class Study:
    name: str
    task: str  # dataset task the study needs: binary | multilabel
    default_dataset: str  # built-in dataset used when --dataset is not given
    default_import: tuple[str, str, Mapping]  # (kind, src, options) to create it if missing
    stages: tuple[Stage, ...]
    profile: Profile
    metric: str = "val_auc"
    mode: str = "max"

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_import", freeze(self.default_import))
        object.__setattr__(self, "stages", tuple(self.stages))
        names = [s.name for s in self.stages]
        if len(set(names)) < len(names):
            raise CxrkdError(f"study {self.name!r}: a stage name is used twice in {names}")
        _check_references(self)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _check_references(study: Study) -> None:
    """Every reference names a cell that comes before it: a teacher reference a cell of a
    teacher stage, a final cell a cell of a stage that chooses (not a final one)."""
    teachers: list[str] = []
    chosen: list[str] = []
    for stage in study.stages:
        for cell in stage.cells:
            bad = [f"the teacher of {t!r}" for t in cell.teachers if t not in teachers]
            bad += [f"the choice of {c!r}" for c in cell.chosen if c not in chosen]
            if bad:
                raise CxrkdError(
                    f"study {study.name!r}: cell {cell.key!r} of stage {stage.name!r} refers to "
                    f"{' and '.join(bad)}, which no earlier cell hands on (teacher cells before "
                    f"it: {teachers}; chosen cells: {chosen})"
                )
            if stage.role == Role.TEACHER:
                teachers.append(cell.key)
            if stage.role != Role.FINAL:
                chosen.append(cell.key)


StudyFactory = Callable[[Profile], Study]
# name -> (factory, profiles); studies register themselves in their modules
STUDIES: Registry[tuple[StudyFactory, dict[str, Profile]]] = Registry(
    "study", package="cxrkd.spaces", plural="studies"
)


def register_study(name: str, profiles: dict[str, Profile]) -> Callable:
    def decorate(factory: StudyFactory) -> StudyFactory:
        STUDIES.add(name, (factory, profiles))
        return factory

    return decorate


def get_study(name: str, profile: str) -> Study:
    factory, profiles = STUDIES.get(name)
    if profile not in profiles:
        raise CxrkdError(
            f"unknown profile {profile!r} for study {name!r}; known profiles: {sorted(profiles)}"
        )
    return factory(profiles[profile])


def searched_cells(study: Study) -> list[tuple[Stage, Cell]]:
    """``(stage, cell)`` of every cell of the stages that choose (teacher and search), in
    order; the final stage re-trains what they chose, under the same keys."""
    return [(s, c) for s in study.stages if s.role != Role.FINAL for c in s.cells]
