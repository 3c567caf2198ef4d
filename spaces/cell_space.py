"""A search cell's define-by-run space: what Optuna samples, with the study's and ``--set``'s
pinned values and a profile's narrowed ranges (the driver's view of a cell, which the Optuna
export of a finished run replays too)."""

from __future__ import annotations

import dataclasses

from cxrkd.spaces import get_space
from cxrkd.spaces.studies import SearchCell
from cxrkd.trainables.errors import CxrkdError


class FixingTrial:
    """An Optuna trial seen through a space function, with some parameters pinned or narrowed.

    A pinned parameter (fixed by the study or by ``--set``) is returned as is and never
    suggested, so Optuna models only what is really searched. ``bounds`` replace the range of
    a numeric parameter (a profile's budget-sized range, e.g. higher learning rates for a few
    hundred steps from scratch) without another space function.
    """

    def __init__(self, trial, fixed: dict, bounds: dict | None = None) -> None:
        self._trial, self._fixed, self._bounds = trial, fixed, bounds or {}

    def _pinned(self, kind: str, name: str, *args, **kwargs):
        if name in self._fixed:
            return self._fixed[name]
        return getattr(self._trial, kind)(name, *args, **kwargs)

    def _ranged(self, kind: str, name: str, low, high, **kwargs):
        low, high = self._bounds.get(name, (low, high))
        return self._pinned(kind, name, low, high, **kwargs)

    def suggest_float(self, name, low, high, **kwargs):
        return self._ranged("suggest_float", name, low, high, **kwargs)

    def suggest_int(self, name, low, high, **kwargs):
        return self._ranged("suggest_int", name, low, high, **kwargs)

    def suggest_categorical(self, name, *args, **kwargs):
        return self._pinned("suggest_categorical", name, *args, **kwargs)


class CellSpace:
    """Picklable define-by-run space for OptunaSearch: the cell's choices, then its space,
    on top of its fixed values."""

    def __init__(self, cell: SearchCell) -> None:
        self.key, self.space_name, self.fixed = cell.key, cell.space, dict(cell.fixed)
        self.bounds, self.choices = dict(cell.bounds), dict(cell.choices)

    def __call__(self, trial) -> dict:
        pinned = dict(self.fixed)
        for name, options in self.choices.items():
            # Through the view: a value pinned by `--set` is taken, not suggested.
            value = FixingTrial(trial, self.fixed).suggest_categorical(name, list(options))
            pinned.update({name: value, **linked_values(self.key, name, value, options)})
        view = FixingTrial(trial, pinned, self.bounds)
        suggested = get_space(self.space_name)(view) or {}
        return {**suggested, **pinned}


def linked_values(key: str, name: str, value, options: dict) -> dict:
    """What choosing ``name=value`` pins with it; a value outside the choices is an error."""
    if value not in options:
        raise CxrkdError(
            f"{name}={value!r} is not one of cell {key!r}'s choices {list(options)}; pick one "
            f"of them (or leave {name} unset to search it)"
        )
    return options[value]


def expand_choices(cell: SearchCell) -> list[SearchCell]:
    """One cell per combination of the cell's choices, each pinned in ``fixed`` (what the
    driver checks or warms up once per combination); the cell itself when it has none."""
    cells = [cell]
    for name, options in cell.choices.items():
        if name in cell.fixed:  # pinned by --set: that one value, with what it brings
            value = cell.fixed[name]
            options = {value: linked_values(cell.key, name, value, options)}
        cells = [
            dataclasses.replace(c, fixed={**c.fixed, name: value, **linked}, choices={})
            for c in cells
            for value, linked in options.items()
        ]
    return cells
