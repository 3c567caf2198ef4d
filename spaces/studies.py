"""Study definitions: stages of cells, profiles, and the comparison table they end in.

A study is a list of stages run in order (teachers first, then students and baselines, then
the final re-training on several seeds). A stage holds cells; each cell has its own Optuna
study and is early-stopped only against trials of the same cell, and all cells of a stage run
side by side. Cells of later stages are built from what earlier stages chose
(:class:`StudyState`), e.g. the registered teacher or each cell's best configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field

from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.registry import Registry


@dataclass(frozen=True)
class SearchCell:
    """Optuna (TPE) proposes ``num_samples`` configs from ``space`` on top of ``fixed``.

    ``choices`` are searched axes the method's space does not know: ``{name: {value: linked}}``
    suggests ``name`` among the values (a config field, e.g. ``model``) and pins the chosen
    value's ``linked`` config values with it (e.g. the ``teacher_path`` of that size).
    ``objectives`` (``(metric, mode)`` pairs) replace the study's metric for this cell: one is
    searched with ASHA as usual; several make a multi-objective Optuna study without early
    stopping, and the stage chooses the cell's Pareto front (:func:`front_key`).
    """

    key: str
    space: str
    fixed: dict
    num_samples: int
    bounds: dict = field(default_factory=dict)  # name -> (low, high) replacing the space's
    choices: dict[str, dict] = field(default_factory=dict)
    objectives: tuple[tuple[str, str], ...] = ()


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

    def front(self, cell: str) -> list[str]:
        """The Pareto-front keys chosen for a multi-objective ``cell``, best first; empty for a
        single-objective cell (its one choice is under its own key)."""
        return front_keys(cell, self.best)

    def chosen(self, key: str) -> dict:
        if key not in self.best:
            raise CxrkdError(f"no configuration was chosen for cell {key!r}: its stage found none")
        return self.best[key]


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


def front_key(cell: str, rank: int) -> str:
    """Final-stage key of the ``rank``-th (1-based, best first metric first) Pareto-front
    configuration of a multi-objective cell."""
    return f"{cell}-pareto{rank}"


def front_keys(cell: str, present: Container[str]) -> list[str]:
    """``cell``'s front keys found in ``present``, best first."""
    keys: list[str] = []
    while front_key(cell, len(keys) + 1) in present:
        keys.append(front_key(cell, len(keys) + 1))
    return keys


@dataclass(frozen=True)
class Stage:
    name: str
    role: str  # "teacher": its best trial is registered as the teacher; "search"; "final"
    cells: Callable[[StudyState], list[Cell]]
    early_stopping: bool = True


def kd_stages(teachers: Callable, search: Callable, final: Callable) -> list[Stage]:
    """Teachers -> search -> final re-training on seeds: the stages of both papers' studies
    (the final stage re-runs chosen configurations, so nothing is early-stopped there)."""
    return [
        Stage("teacher", "teacher", teachers),
        Stage("search", "search", search),
        Stage("final", "final", final, early_stopping=False),
    ]


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
    # OBJECTIVES names of a study's open search (first: the quality); () for studies without
    # one, which refuse `--objective`.
    objectives: tuple[str, ...] = ()
    device_hint: str = ""  # where the profile is meant to run, for the tables' caption
    # TrainConfig values a study's teacher cells get on top of ``fixed``: a demo may train its
    # teachers longer than its students (a teacher that has not learned has nothing to distil).
    teacher_fixed: dict = field(default_factory=dict)

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


REGISTERED_PREFIX = "registered:"


def registered(teacher_cell: str) -> str:
    """A table cell that stands for the registered checkpoint of a teacher cell (the model the
    students distilled from), not for its final-stage re-training on fresh seeds."""
    return f"{REGISTERED_PREFIX}{teacher_cell}"


@dataclass(frozen=True)
class PivotSpec:
    """A grid table: ``entries`` are ``(row labels, column, final cell key, metric)``."""

    title: str
    stem: str
    row_names: tuple[str, ...]
    entries: list[tuple[tuple[str, ...], str, str, str]]
    configs: dict[str, list[str]] = field(default_factory=dict)  # cell -> keys to list
    # KD cell -> its no-KD baseline cell (same size and resolution): the paired test's pair.
    baselines: dict[str, str] = field(default_factory=dict)
    # Each entry's metric is a template "test_auroc_{finding}", expanded at report time into
    # one column per finding of the dataset (the study does not know the dataset's findings).
    per_finding: bool = False
    note: str = ""  # what the caption must say about this table's columns


@dataclass(frozen=True)
class ParetoSpec:
    """The final models of one open search cell (its Pareto front, or its single choice): the
    chosen configuration, the search trial's validation objectives, cost and test AUROCs."""

    title: str
    stem: str
    stage: str  # the search stage of the cell
    cell: str
    objectives: tuple[tuple[str, str], ...]
    configs: list[str]  # config keys to list


@dataclass(frozen=True)
class TableSpec:
    rows: list[tuple[str, str]]  # (final cell key, display name), in order
    metrics: list[tuple[str, str]]  # (trials column, display name)
    hyperparams: dict[str, list[str]]  # row key -> config keys to print
    title: str
    stem: str
    # KD row key -> its no-KD baseline row key: the pair of the paired test on test images.
    baselines: dict[str, str] = field(default_factory=dict)
    # Teacher rows to show twice: re-trained on the final seeds, and as the registered
    # checkpoint the students distilled from (a row `registered(key)` right after it).
    registered_teachers: tuple[str, ...] = ()
    note: str = ""  # what the caption must say about this table's rows


def table_rows(spec: TableSpec) -> list[tuple[str, str]]:
    """``spec.rows`` with a ``(registered(key), "<name> (distilled from)")`` row after each
    row named in ``spec.registered_teachers``."""
    wanted = set(spec.registered_teachers)
    out: list[tuple[str, str]] = []
    for key, name in spec.rows:
        out.append((key, name))
        if key in wanted:
            out.append((registered(key), f"{name} (distilled from)"))
    return out


@dataclass(frozen=True)
class Study:
    name: str
    task: str  # dataset task the study needs: binary | multilabel
    default_dataset: str  # built-in dataset used when --dataset is not given
    default_import: tuple[str, str, dict]  # (kind, src, options) to create it if missing
    stages: list[Stage]
    tables: list[TableSpec | PivotSpec | ParetoSpec]
    profile: Profile
    metric: str = "val_auc"
    mode: str = "max"


StudyFactory = Callable[[Profile], Study]
# name -> (factory, profiles); studies register themselves in their modules
STUDIES: Registry[tuple[StudyFactory, dict[str, Profile]]] = Registry(
    "study",
    ("cxrkd.spaces.pneumonia_kd", "cxrkd.spaces.lowres_kd", "cxrkd.spaces.lowres_open"),
    plural="studies",
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
