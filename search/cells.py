"""A study's cells side by side in one Tune experiment: a searcher and a scheduler per cell.

:class:`CellSearcher` keeps one ``OptunaSearch`` (TPE, seeded) per search cell and hands out
trials over the open cells that still have budget (the cell of the highest level first:
the work on its longest path to the study's end, :mod:`search.schedule`; then earlier stages
first, round robin among equals), so no worker idles while any cell has work and the end of
the longest chain of cells rarely runs alone while other slots idle; the driver
(:mod:`search.study_run`)
opens a cell as soon as what it needs is chosen. :class:`CellScheduler` keeps one ASHA per
cell, so a trial is only ever stopped against trials of its own cell. Each suggested config
carries its cell key under ``"cell"`` and its stage under ``"stage"`` (both stripped before
the trial parses its config). A cell with several objectives gets a multi-objective Optuna
study and no ASHA (it cannot rank several metrics).

Their state crosses a driver restart as JSON (:meth:`CellSearcher.save`,
:meth:`SchedulerState.get_state`), so reading it back runs no code (DESIGN.md, "Running").
"""

from __future__ import annotations

import json

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from cxrkd.search.searcher_json import (
    SEARCHER_FORMAT,
    asha_state,
    optuna_state,
    restore_asha,
    restore_optuna,
)
from cxrkd.spaces.cell_space import CellSpace
from cxrkd.spaces.studies import Cell, SearchCell
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY


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


def cell_id(stage: str, key: str) -> str:
    """A cell's name in the study's one experiment: a final cell re-trains a search cell's
    choice under the same key, so the key alone is not unique."""
    return f"{stage}/{key}"


def rank(level: float, stage: int, issued: int, position: int) -> tuple:
    """Of the ready cells, a free slot serves the one of the smallest rank: the highest level
    (the work on its longest path to the study's end), then the earliest stage, then the one
    that has issued fewest trials (round robin), then its place in its stage. The driver's
    searcher and ``search plan``'s wall time (``search.schedule.study_makespan``) both rank
    by it. The top cell takes every free slot until its trials are all handed out."""
    return (-level, stage, issued, position)


def cell_budget(cell: Cell) -> int:
    return cell.num_samples if isinstance(cell, SearchCell) else len(cell.configs)


class CellSearcher(Searcher):
    """Every cell of a study in one experiment. Cells are added as they become ready (the
    driver, :mod:`search.study_run`, opens a student cell once its teacher is registered);
    :meth:`suggest` returns None while no open cell has budget left and FINISHED once the
    driver :meth:`finish` es the study. The cell of the highest ``level`` goes first (the
    work on its longest path to the study's end: a teacher before the baselines that nothing
    waits for, a long final re-training before short searches), then earlier stages, then
    round robin over equal cells.

    A cell may be *gated*: of the cells that share a gate (a teacher), one trial runs alone
    until it has reported, so it alone computes the teacher outputs the others then read."""

    def __init__(self, *, metric: str, mode: str, seed: int) -> None:
        super().__init__(metric=metric, mode=mode)
        self.seed = seed
        self.cells: dict[str, Cell] = {}  # cell id -> cell
        self.order: dict[str, tuple[int, int]] = {}  # cell id -> (stage, position)
        self.level: dict[str, float] = {}  # cell id -> work on its longest path to the end
        self.stage_of: dict[str, str] = {}
        self.gate: dict[str, str] = {}  # cell id -> its gate
        self.optuna: dict[str, OptunaSearch] = {}
        self.primary: dict[str, str] = {}  # cell id -> the metric its searcher reads per epoch
        self.issued: dict[str, int] = {}
        self.trial_cell: dict[str, str] = {}
        self.gate_trial: dict[str, str] = {}  # gate -> the trial that opens it
        self.gates_open: set[str] = set()
        self.finished = False
        self._saved: dict | None = None  # a snapshot's state of cells not added yet

    def __setstate__(self, state: dict) -> None:
        # A run snapshot by a cxrkd before cell levels: its cells rank as equals.
        self.__dict__.update({"level": {}, **state})

    def add_cell(
        self, stage: str, cell: Cell, *, order: tuple[int, int], gate=None, level: float = 0.0
    ) -> str:
        """Open ``cell`` of ``stage`` (idempotent); ``order``: (stage index, position in its
        stage), which also seeds its sampler as a stage-by-stage run did; ``level``: the
        work on its longest path to the study's end (:mod:`search.schedule`)."""
        import optuna

        cid = cell_id(stage, cell.key)
        if cid in self.cells:
            return cid
        self.cells[cid], self.order[cid], self.stage_of[cid] = cell, order, stage
        self.level[cid] = level
        self.issued[cid] = 0
        if gate:
            self.gate[cid] = gate
        if isinstance(cell, SearchCell):
            objectives = cell_objectives(cell, metric=self.metric, mode=self.mode)
            names, modes = [m for m, _ in objectives], [d for _, d in objectives]
            multi = len(objectives) > 1
            # TPE handles several objectives too (MOTPE); seeded like the single ones.
            self.optuna[cid] = OptunaSearch(
                space=CellSpace(cell),
                metric=names if multi else names[0],
                mode=modes if multi else modes[0],
                sampler=optuna.samplers.TPESampler(seed=self.seed + order[1]),
            )
            self.primary[cid] = names[0]
        if self._saved is not None:
            try:
                self._restore_cell(cid)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise self._unreadable("of this run", exc) from None
        return cid

    def finish(self) -> None:
        self.finished = True

    def may_issue(self, cid: str) -> bool:
        if self.issued[cid] >= cell_budget(self.cells[cid]):
            return False
        gate = self.gate.get(cid)
        return gate is None or gate in self.gates_open or gate not in self.gate_trial

    def suggest(self, trial_id: str) -> dict | None:
        if self.finished:
            return Searcher.FINISHED
        ready = [cid for cid in self.cells if self.may_issue(cid)]
        if not ready:
            return None  # the driver opens more cells as earlier ones end
        cid = min(ready, key=self._rank)
        cell = self.cells[cid]
        if cid in self.optuna:
            config = self.optuna[cid].suggest(trial_id)
        else:
            config = dict(cell.configs[self.issued[cid]])
        self.issued[cid] += 1
        self.trial_cell[trial_id] = cid
        gate = self.gate.get(cid)
        if gate is not None and gate not in self.gates_open:
            self.gate_trial[gate] = trial_id
        return {**config, CELL_KEY: cell.key, STAGE_KEY: self.stage_of[cid]}

    def _rank(self, cid: str) -> tuple:
        (stage, position), level = self.order[cid], self.level.get(cid, 0.0)
        return rank(level, stage, self.issued[cid], position)

    def _opens_gate(self, trial_id: str) -> None:
        for gate, opener in self.gate_trial.items():
            if opener == trial_id:
                self.gates_open.add(gate)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._opens_gate(trial_id)
        cid = self.trial_cell.get(trial_id)
        searcher = self.optuna.get(cid)
        if searcher is not None and self.primary[cid] in result:
            searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self._opens_gate(trial_id)
        searcher = self.optuna.get(self.trial_cell.get(trial_id))
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        """Tune snapshots the searcher with the experiment (``searcher-state-*.pkl``, its
        name): what was issued, and each cell's Optuna study and sampler, as JSON."""
        state = {
            "format": SEARCHER_FORMAT,
            "issued": self.issued,
            "trial_cell": self.trial_cell,
            "gate_trial": self.gate_trial,
            "gates_open": sorted(self.gates_open),
            "studies": {cid: optuna_state(s) for cid, s in self.optuna.items()},
        }
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Into the searcher ``Tuner.restore`` unpickled from the (signed) ``tuner.pkl``:
        the cells opened since are added again by the driver, and each one takes its state
        from the snapshot as it comes (fresh studies refilled trial by trial, samplers at the
        random state they had), so the search goes on as if never interrupted."""
        try:
            with open(checkpoint_path, encoding="utf-8") as f:
                state = json.load(f)
            if state.get("format") != SEARCHER_FORMAT:
                raise ValueError(f"format {state.get('format')!r}, not {SEARCHER_FORMAT!r}")
            self._saved = {
                "issued": {str(k): int(v) for k, v in state["issued"].items()},
                "studies": dict(state["studies"]),
            }
            self.trial_cell = {str(k): str(v) for k, v in state["trial_cell"].items()}
            self.gate_trial = {str(k): str(v) for k, v in state["gate_trial"].items()}
            self.gates_open = {str(g) for g in state["gates_open"]}
            for cid in self.cells:
                self._restore_cell(cid)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._unreadable(checkpoint_path, exc) from None

    def _restore_cell(self, cid: str) -> None:
        saved = self._saved or {}
        self.issued[cid] = saved["issued"].get(cid, 0)
        if cid in saved["studies"]:
            if cid not in self.optuna:
                raise ValueError(f"cell {cid!r} is searched in the snapshot, fixed here")
            restore_optuna(self.optuna[cid], saved["studies"][cid])

    @staticmethod
    def _unreadable(path: str, exc: BaseException) -> CxrkdError:
        return CxrkdError(
            f"the searcher snapshot {path} cannot be read ({type(exc).__name__}: {exc}); it "
            "was written by another cxrkd version: resume the run with that version, or start "
            "a new run"
        )


class CellScheduler(FIFOScheduler):
    """One ASHA per cell that early-stops (none for the final re-training, nor for a cell
    with several objectives); cells are added as the driver opens them. :meth:`halt` stops
    every running trial at its next result (the study cannot go on)."""

    def __init__(self, *, metric: str, mode: str, grace_period: int, reduction_factor: int):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self.asha: dict[str, AsyncHyperBandScheduler] = {}
        self.halted = False
        self._saved: dict = {}  # a snapshot's rungs of cells not added yet

    def add_cell(self, stage: str, cell: Cell, *, early_stopping: bool, default_epochs: int):
        cid = cell_id(stage, cell.key)
        if cid in self.asha or not early_stopping:
            return
        objectives = cell_objectives(cell, metric=self._metric, mode=self._mode)
        if len(objectives) > 1:
            return  # ASHA ranks one metric: a multi-objective cell runs every trial out
        cell_metric, cell_mode = objectives[0]
        # Each cell's own length: a study may train its teachers longer than its students.
        epochs = max(cell_epochs(cell, default=default_epochs))
        self.asha[cid] = AsyncHyperBandScheduler(
            time_attr="training_iteration",
            metric=cell_metric,
            mode=cell_mode,
            max_t=epochs,
            grace_period=min(self.grace_period, epochs),
            reduction_factor=self.reduction_factor,
        )
        if cid in self._saved:
            restore_asha(self.asha[cid], self._saved.pop(cid))

    def halt(self) -> None:
        self.halted = True

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def _of(self, trial) -> AsyncHyperBandScheduler | None:
        return self.asha.get(cell_id(trial.config[STAGE_KEY], trial.config[CELL_KEY]))

    def on_trial_add(self, tune_controller, trial) -> None:
        if (asha := self._of(trial)) is not None:
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.halted:
            return TrialScheduler.STOP
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
        """Cells the driver has not added again yet take their rungs when it does."""
        for key, saved in state["asha"].items():
            if key in self.scheduler.asha:
                restore_asha(self.scheduler.asha[key], saved)
            else:
                self.scheduler._saved[key] = saved
