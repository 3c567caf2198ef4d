"""Cells side by side in one Tune experiment: a searcher and a scheduler per cell.

:class:`CellSearcher` keeps one ``OptunaSearch`` (TPE, seeded) per search cell and hands out
trials round-robin over the cells that still have budget, so cells run side by side and no
worker idles while any cell has work. :class:`CellScheduler` keeps one ASHA per cell, so a
trial is only ever stopped against trials of its own cell. Each suggested config carries its
cell key under ``"cell"`` (stripped before the trial parses its config). A cell with several
objectives gets a multi-objective Optuna study and no ASHA (it cannot rank several metrics).
"""

from __future__ import annotations

import dataclasses
import pickle

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from spaces import get_space
from spaces.studies import Cell, SearchCell
from trainables.errors import CxrkdError
from trainables.trainable import CELL_KEY


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


def cell_objectives(cell: Cell, *, metric: str, mode: str) -> tuple[tuple[str, str], ...]:
    """The ``(metric, mode)`` pairs a cell is searched on: its own, else the study's."""
    own = cell.objectives if isinstance(cell, SearchCell) else ()
    return own or ((metric, mode),)


def cell_epochs(cell: Cell, *, default: int) -> list[int]:
    """How many epochs the cell's trials run: its pinned ``epochs`` (a study's teachers may
    train longer than its students), else the profile's ``default``."""
    if isinstance(cell, SearchCell):
        return [int(cell.fixed.get("epochs", default))]
    return [int(config.get("epochs", default)) for config in cell.configs]


class CellSearcher(Searcher):
    def __init__(self, cells: list[Cell], *, metric: str, mode: str, seed: int) -> None:
        super().__init__(metric=metric, mode=mode)
        import optuna

        self.cells = list(cells)
        self.optuna: dict[str, OptunaSearch] = {}
        self.primary: dict[str, str] = {}  # cell -> the metric its searcher reads per epoch
        for i, cell in enumerate(self.cells):
            if isinstance(cell, SearchCell):
                objectives = cell_objectives(cell, metric=metric, mode=mode)
                names, modes = [m for m, _ in objectives], [d for _, d in objectives]
                multi = len(objectives) > 1
                # TPE handles several objectives too (MOTPE); seeded like the single ones.
                self.optuna[cell.key] = OptunaSearch(
                    space=CellSpace(cell),
                    metric=names if multi else names[0],
                    mode=modes if multi else modes[0],
                    sampler=optuna.samplers.TPESampler(seed=seed + i),
                )
                self.primary[cell.key] = names[0]
        self.issued = {cell.key: 0 for cell in self.cells}
        self.trial_cell: dict[str, str] = {}

    def _budget(self, cell: Cell) -> int:
        return cell.num_samples if isinstance(cell, SearchCell) else len(cell.configs)

    def suggest(self, trial_id: str) -> dict | None:
        open_cells = [c for c in self.cells if self.issued[c.key] < self._budget(c)]
        if not open_cells:
            return Searcher.FINISHED
        cell = min(open_cells, key=lambda c: self.issued[c.key])  # round robin, in order
        if cell.key in self.optuna:
            config = self.optuna[cell.key].suggest(trial_id)
        else:
            config = dict(cell.configs[self.issued[cell.key]])
        self.issued[cell.key] += 1
        self.trial_cell[trial_id] = cell.key
        return {**config, CELL_KEY: cell.key}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        cell = self.trial_cell.get(trial_id)
        searcher = self.optuna.get(cell)
        if searcher is not None and self.primary[cell] in result:
            searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        searcher = self.optuna.get(self.trial_cell.get(trial_id))
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class CellScheduler(FIFOScheduler):
    """One ASHA per cell (or none: plain FIFO for the final stage)."""

    def __init__(
        self,
        cells: list[Cell],
        *,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: int,
        early_stopping: bool,
    ) -> None:
        super().__init__()
        self._metric, self._mode = metric, mode
        self.asha: dict[str, AsyncHyperBandScheduler] = {}
        for cell in cells if early_stopping else []:
            objectives = cell_objectives(cell, metric=metric, mode=mode)
            if len(objectives) > 1:
                continue  # ASHA ranks one metric: a multi-objective cell runs every trial out
            cell_metric, cell_mode = objectives[0]
            # Each cell's own length: a stage may mix cells trained for different epochs.
            epochs = max(cell_epochs(cell, default=max_t))
            self.asha[cell.key] = AsyncHyperBandScheduler(
                time_attr="training_iteration",
                metric=cell_metric,
                mode=cell_mode,
                max_t=epochs,
                grace_period=min(grace_period, epochs),
                reduction_factor=reduction_factor,
            )

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def _of(self, trial) -> AsyncHyperBandScheduler | None:
        return self.asha.get(trial.config[CELL_KEY])

    def on_trial_add(self, tune_controller, trial) -> None:
        if (asha := self._of(trial)) is not None:
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        asha = self._of(trial)
        if asha is None or trial.trial_id not in asha._trial_info:
            return TrialScheduler.CONTINUE
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        asha = self._of(trial)
        if asha is not None and trial.trial_id in asha._trial_info:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        asha = self._of(trial)
        if asha is not None and trial.trial_id in asha._trial_info:
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "CellScheduler: " + ", ".join(
            f"{k}: stopped {a._num_stopped}" for k, a in self.asha.items()
        )


class SchedulerState(Callback):
    """Carries the :class:`CellScheduler`'s rungs across a driver restart.

    Tune snapshots its searcher and its callbacks with the experiment, but not its scheduler:
    a resumed experiment would start every cell's ASHA with empty rungs and let through trials
    that the interrupted one would have stopped. Tune pickles the scheduler and the callbacks
    in one ``tuner.pkl``, so after ``Tuner.restore`` this callback still holds the scheduler
    the restored experiment uses, and refills it from the snapshot before any trial resumes.
    """

    def __init__(self, scheduler: CellScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict | None:
        asha = self.scheduler.asha
        if not asha:
            return None
        return {"asha": pickle.dumps({key: a.__dict__ for key, a in asha.items()})}

    def set_state(self, state: dict) -> None:
        for key, saved in pickle.loads(state["asha"]).items():
            if key in self.scheduler.asha:
                self.scheduler.asha[key].__dict__.update(saved)
