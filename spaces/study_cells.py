"""A study's cells as frozen data, and the one function that makes them concrete.

Cells of later stages depend on what earlier stages chose. They say so with symbolic
references instead of values: a student's ``teacher_path`` is :class:`TeacherOf` the teacher
cell (in ``fixed``, in a fixed config, or as a linked value of a choice), and a final cell is a
:class:`FinalCell` that re-trains what another cell chose. So what a cell needs is a plain
attribute (:attr:`SearchCell.teachers`, :attr:`FinalCell.chosen`), a study can be printed,
compared and hashed, and the checks, the plan and the report read it as it is. The driver calls
:func:`resolve` when a cell starts, against the :class:`StudyState` that earlier cells left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cxrkd.trainables.errors import CxrkdError


class FrozenDict(Mapping):
    """A read-only dict that hashes (a study's values are data: compared, hashed, printed);
    ``{**frozen, "seed": 0}`` and ``dict(frozen)`` are plain dicts again."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping | None = None, /) -> None:
        self._items = dict(items or {})
        self._hash: int | None = None

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self) -> Iterator:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._items.items()))
        return self._hash

    def __repr__(self) -> str:
        return repr(self._items)

    def __reduce__(self):
        return FrozenDict, (self._items,)


def freeze(value: Any) -> Any:
    """Dicts as :class:`FrozenDict` and lists as tuples, all the way down."""
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class TeacherOf:
    """The registry URI of the teacher that teacher cell ``cell`` registered (a config value,
    e.g. ``fixed["teacher_path"]``)."""

    cell: str

    def __str__(self) -> str:
        return f"<teacher of {self.cell}>"


def teachers_in(value: Any) -> tuple[str, ...]:
    """The teacher cells that ``value`` (a config, choices, anything frozen) refers to."""
    if isinstance(value, TeacherOf):
        return (value.cell,)
    if isinstance(value, Mapping):
        value = value.values()
    elif not isinstance(value, tuple):
        return ()
    return tuple(dict.fromkeys(t for v in value for t in teachers_in(v)))


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
    fixed: Mapping[str, Any]
    num_samples: int
    bounds: Mapping[str, tuple] = FrozenDict()  # name -> (low, high) replacing the space's
    choices: Mapping[str, Mapping] = FrozenDict()
    objectives: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("fixed", "bounds", "choices", "objectives"):
            object.__setattr__(self, name, freeze(getattr(self, name)))
        if self.num_samples < 1:
            raise CxrkdError(f"cell {self.key!r}: num_samples must be at least 1, not "
                             f"{self.num_samples}")  # fmt: skip

    @property
    def teachers(self) -> tuple[str, ...]:
        """The teacher cells whose registered teacher this cell's trials load."""
        return teachers_in((self.fixed, self.choices))

    @property
    def chosen(self) -> tuple[str, ...]:
        """The cells whose chosen configuration this cell is built from: none."""
        return ()


@dataclass(frozen=True)
class FixedCell:
    """Runs the given configs as they are (a resolved final cell: one per seed)."""

    key: str
    configs: tuple[Mapping[str, Any], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "configs", freeze(tuple(self.configs)))

    @property
    def teachers(self) -> tuple[str, ...]:
        return teachers_in(self.configs)

    @property
    def chosen(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class FinalCell:
    """Re-trains the configuration chosen for cell ``of`` on seeds ``0..seeds-1`` and tests
    it, under ``key``. A multi-objective cell chose a Pareto front: each of its
    configurations is re-trained, under ``front_key(key, rank)``."""

    key: str
    of: str
    seeds: int

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise CxrkdError(f"final cell {self.key!r}: seeds must be at least 1, not {self.seeds}")

    @property
    def teachers(self) -> tuple[str, ...]:
        return ()

    @property
    def chosen(self) -> tuple[str, ...]:
        """The cells whose chosen configuration this cell re-trains."""
        return (self.of,)


Cell = SearchCell | FixedCell | FinalCell


@dataclass
class StudyState:
    """What finished cells handed on; saved in the run folder so a resume sees it too."""

    teachers: dict[str, str] = field(default_factory=dict)  # teacher cell key -> registry URI
    best: dict[str, dict] = field(default_factory=dict)  # cell key -> chosen config

    @property
    def teacher_uri(self) -> str | None:
        """The teacher of a single-teacher study (pneumonia-kd)."""
        return next(iter(self.teachers.values()), None)

    def front(self, cell: str) -> list[str]:
        """The Pareto-front keys chosen for a multi-objective ``cell``, best first; empty for a
        single-objective cell (its one choice is under its own key)."""
        return front_keys(cell, self.best)


FRONT = "-pareto"  # between a cell's key and a rank in its front's final-stage keys


def front_key(cell: str, rank: int) -> str:
    """Final-stage key of the ``rank``-th (1-based, best first metric first) Pareto-front
    configuration of a multi-objective cell."""
    return f"{cell}{FRONT}{rank}"


def front_of(key: str) -> str:
    """The cell whose Pareto front a :func:`front_key` ``key`` re-trains; any other key is its
    own cell."""
    cell, sep, rank = key.rpartition(FRONT)
    return cell if sep and rank.isdigit() else key


def front_keys(cell: str, present: Container[str]) -> list[str]:
    """``cell``'s front keys found in ``present``, best first."""
    keys: list[str] = []
    while front_key(cell, len(keys) + 1) in present:
        keys.append(front_key(cell, len(keys) + 1))
    return keys


def is_ready(cell: Cell, state: StudyState) -> bool:
    """Whether everything ``cell`` refers to is in ``state`` (:func:`resolve` would succeed)."""
    return all(t in state.teachers for t in cell.teachers) and all(
        c in state.best for c in cell.chosen
    )


def resolve(cell: Cell, state: StudyState) -> tuple[SearchCell | FixedCell, ...]:
    """``cell`` with every reference replaced by its value in ``state``: the concrete cells
    the driver runs. A search or fixed cell gives one cell; a final cell one per
    configuration it re-trains (a Pareto front's several). A reference to what ``state``
    does not hold yet is refused: the driver resolves a cell only once it :func:`is_ready`."""
    missing = [f"the teacher of cell {t!r}" for t in cell.teachers if t not in state.teachers]
    missing += [f"the configuration chosen for cell {c!r}" for c in cell.chosen
                if c not in state.best]  # fmt: skip
    if missing:
        raise CxrkdError(
            f"cell {cell.key!r} cannot be resolved: it refers to {' and '.join(missing)}, which "
            f"no finished cell has handed on yet (teachers: {sorted(state.teachers)}, chosen: "
            f"{sorted(state.best)}); a cell starts only once what it refers to is there"
        )
    if isinstance(cell, FinalCell):
        front = front_keys(cell.of, state.best)
        pairs = [(front_key(cell.key, i), k) for i, k in enumerate(front, 1)]
        pairs = pairs or [(cell.key, cell.of)]
        return tuple(
            FixedCell(key, tuple({**state.best[of], "seed": seed, "evaluate_test": True}
                                 for seed in range(cell.seeds)))
            for key, of in pairs
        )  # fmt: skip
    if isinstance(cell, SearchCell):
        fixed, choices = _values(cell.fixed, state), _values(cell.choices, state)
        return (dataclasses.replace(cell, fixed=fixed, choices=choices),)
    return (dataclasses.replace(cell, configs=_values(cell.configs, state)),)


def _values(value: Any, state: StudyState) -> Any:
    if isinstance(value, TeacherOf):
        return state.teachers[value.cell]
    if isinstance(value, Mapping):
        return {k: _values(v, state) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_values(v, state) for v in value)
    return value
