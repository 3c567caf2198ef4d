"""Study definitions: stages of cells, profiles, and the comparison table they end in.

A study is a list of stages run in order (teachers first, then students and baselines, then
the final re-training on several seeds). A stage holds cells; each cell has its own Optuna
study and is early-stopped only against trials of the same cell, and all cells of a stage run
side by side. Cells of later stages are built from what earlier stages chose
(:class:`StudyState`), e.g. the registered teacher or each cell's best configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trainables.errors import CxrkdError
from trainables.registry import Registry


@dataclass(frozen=True)
class SearchCell:
    """Optuna (TPE) proposes ``num_samples`` configs from ``space`` on top of ``fixed``."""

    key: str
    space: str
    fixed: dict
    num_samples: int
    bounds: dict = field(default_factory=dict)  # name -> (low, high) replacing the space's


@dataclass(frozen=True)
class FixedCell:
    """Runs the given configs as they are (the final stage: one per seed)."""

    key: str
    configs: tuple[dict, ...]


Cell = SearchCell | FixedCell


@dataclass
class StudyState:
    """What finished stages handed on; saved in the run folder so a resume sees it too.

    ``placeholder=True`` makes a state for checking cells before anything ran: every teacher
    is ``"<teacher>"``.
    """

    teachers: dict[str, str] = field(default_factory=dict)  # teacher cell key -> registry URI
    best: dict[str, dict] = field(default_factory=dict)  # cell key -> chosen config
    placeholder: bool = False

    def teacher(self, key: str) -> str:
        if self.placeholder:
            return "<teacher>"
        if key not in self.teachers:
            raise CxrkdError(f"no teacher was registered for cell {key!r}: its stage found none")
        return self.teachers[key]

    @property
    def teacher_uri(self) -> str | None:
        """The teacher of a single-teacher study (pneumonia-kd)."""
        return next(iter(self.teachers.values()), None)

    def chosen(self, key: str) -> dict:
        if key not in self.best:
            raise CxrkdError(f"no configuration was chosen for cell {key!r}: its stage found none")
        return self.best[key]


@dataclass(frozen=True)
class Stage:
    name: str
    role: str  # "teacher": its best trial is registered as the teacher; "search"; "final"
    cells: Callable[[StudyState], list[Cell]]
    early_stopping: bool = True


@dataclass(frozen=True)
class Profile:
    """Sizes of a study: the fixed trial settings and the search budget."""

    name: str
    fixed: dict  # TrainConfig values every trial gets (img_size, epochs, pretrained, ...)
    samples: int  # trials per search cell
    teacher_samples: int
    seeds: int  # final re-training seeds per row
    grace_period: int  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2
    bounds: dict = field(default_factory=dict)  # search ranges sized to the budget
    grid: dict = field(default_factory=dict)  # study-specific axes (e.g. lowres-kd's Grid)
    device_hint: str = ""  # where the profile is meant to run, for the tables' caption

    @property
    def banner(self) -> str:
        f = self.fixed
        weights = "ImageNet-pretrained" if f["pretrained"] else "no pretrained weights"
        return (
            f"{self.name} scale ({self.device_hint}): {f['img_size']} px, {f['epochs']} epochs, "
            f"{weights}, {self.samples} trials per cell, {self.seeds} seeds"
        )


@dataclass(frozen=True)
class PivotSpec:
    """A grid table: ``entries`` are ``(row labels, column, final cell key, metric)``."""

    title: str
    stem: str
    row_names: tuple[str, ...]
    entries: list[tuple[tuple[str, ...], str, str, str]]
    configs: dict[str, list[str]] = field(default_factory=dict)  # cell -> keys to list


@dataclass(frozen=True)
class TableSpec:
    rows: list[tuple[str, str]]  # (final cell key, display name), in order
    metrics: list[tuple[str, str]]  # (trials column, display name)
    hyperparams: dict[str, list[str]]  # row key -> config keys to print
    title: str
    stem: str


@dataclass(frozen=True)
class Study:
    name: str
    task: str  # dataset task the study needs: binary | multilabel
    default_dataset: str  # built-in dataset used when --dataset is not given
    default_import: tuple[str, str, dict]  # (kind, src, options) to create it if missing
    stages: list[Stage]
    tables: list[TableSpec | PivotSpec]
    profile: Profile
    metric: str = "val_auc"
    mode: str = "max"


StudyFactory = Callable[[Profile], Study]
# name -> (factory, profiles); studies register themselves in their modules
STUDIES: Registry[tuple[StudyFactory, dict[str, Profile]]] = Registry(
    "study", ("spaces.pneumonia_kd", "spaces.lowres_kd"), plural="studies"
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


def final_cells(state: StudyState, rows: list[str], seeds: int) -> list[Cell]:
    """Each row's chosen configuration, re-trained with seeds 0..seeds-1 and tested."""
    return [
        FixedCell(
            key=row,
            configs=tuple(
                {**state.chosen(row), "seed": seed, "evaluate_test": True} for seed in range(seeds)
            ),
        )
        for row in rows
    ]
