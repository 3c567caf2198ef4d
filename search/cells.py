"""Cells side by side in one Tune experiment: a searcher and a scheduler per cell.

:class:`CellSearcher` keeps one ``OptunaSearch`` (TPE, seeded) per search cell and hands out
trials round-robin over the cells that still have budget, so cells run side by side and no
worker idles while any cell has work. :class:`CellScheduler` keeps one ASHA per cell, so a
trial is only ever stopped against trials of its own cell. Each suggested config carries its
cell key under ``"cell"`` (stripped before the trial parses its config). A cell with several
objectives gets a multi-objective Optuna study and no ASHA (it cannot rank several metrics).

Their state crosses a driver restart as JSON (:meth:`CellSearcher.save`,
:meth:`SchedulerState.get_state`), so reading it back runs no code (DESIGN.md, "Running").
"""

from __future__ import annotations

import json

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.searcher_json import (
    SEARCHER_FORMAT,
    asha_state,
    optuna_state,
    restore_asha,
    restore_optuna,
)
from spaces.cell_space import CellSpace
from spaces.studies import Cell, SearchCell
from trainables.errors import CxrkdError
from trainables.trainable import CELL_KEY


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
        """Tune snapshots the searcher with the experiment (``searcher-state-*.pkl``, its
        name): what was issued, and each cell's Optuna study and sampler as JSON."""
        state = {
            "format": SEARCHER_FORMAT,
            "issued": self.issued,
            "trial_cell": self.trial_cell,
            "studies": {key: optuna_state(s) for key, s in self.optuna.items()},
        }
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Into the searcher ``Tuner.restore`` unpickled from the (signed) ``tuner.pkl``,
        built from the same cells: fresh studies refilled trial by trial, samplers at the
        random state they had, so the search goes on as if never interrupted."""
        try:
            with open(checkpoint_path, encoding="utf-8") as f:
                state = json.load(f)
            if state.get("format") != SEARCHER_FORMAT:
                raise ValueError(f"format {state.get('format')!r}, not {SEARCHER_FORMAT!r}")
            unknown = sorted(set(state["studies"]) - set(self.optuna))
            if unknown or set(state["issued"]) != set(self.issued):
                raise ValueError(f"its cells {sorted(state['issued'])} are not this stage's")
            for key, saved in state["studies"].items():
                restore_optuna(self.optuna[key], saved)
            self.issued = {k: int(v) for k, v in state["issued"].items()}
            self.trial_cell = {str(k): str(v) for k, v in state["trial_cell"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CxrkdError(
                f"the searcher snapshot {checkpoint_path} cannot be read "
                f"({type(exc).__name__}: {exc}); it was written by another cxrkd version: "
                "resume the run with that version, or start a new run"
            ) from None


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
        """Each cell's ASHA rungs as plain values (no objects, so nothing to unpickle but
        numbers and names): per bracket, each rung's milestone and recorded results."""
        asha = self.scheduler.asha
        if not asha:
            return None
        return {"asha": {key: asha_state(a) for key, a in asha.items()}}

    def set_state(self, state: dict) -> None:
        for key, saved in state["asha"].items():
            if key in self.scheduler.asha:
                restore_asha(self.scheduler.asha[key], saved)
