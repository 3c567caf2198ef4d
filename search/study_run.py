"""A study as one Tune experiment, each cell started as soon as what it needs is chosen.

There is no barrier between stages: a student cell starts once its own teacher is registered,
a baseline (no teacher) at once, a final re-training once its search cell has ended, and the
trial processes (each one has imported torch, torchvision and timm: ~9 s) serve every stage.
:class:`StudyDriver`, a Tune callback, notices a cell whose trials have all ended, chooses its
configuration (:func:`search.stage.choose`), registers a teacher, writes ``state.json``, then
opens the cells that became ready (:mod:`search.dependencies`: each study cell resolved, its
references to teachers and chosen configurations replaced by their values) in the
:class:`CellSearcher`.

**Resume.** The experiment (``RUN/study``) is restored by Tune from its newest snapshot. The
driver's own state is ``state.json``: cells finished and what they chose. A restored driver
opens the cells that state makes ready, each of which takes its searcher and ASHA state from
the snapshot; a cell that ended after the snapshot was taken ends again (its choice in
``state.json``, made first, stands).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ray import tune
from ray.tune import Callback
from ray.tune.search import ConcurrencyLimiter

from cxrkd.search import dependencies
from cxrkd.search.actor_reuse import keep_starting_actors
from cxrkd.search.cells import CellScheduler, CellSearcher, SchedulerState, cell_budget, cell_id
from cxrkd.search.lean_trials import LeanTrials
from cxrkd.search.optuna_live import run_callbacks
from cxrkd.search.records import ProgressCallback, error_line
from cxrkd.search.run_state import read_progress, write_state
from cxrkd.search.schedule import level_of
from cxrkd.search.signing import Signer, signed_tune_state
from cxrkd.search.snapshots import durable_snapshots
from cxrkd.search.stage import (
    KEEP_CHECKPOINTS,
    MAX_FAILURES,
    choose,
    config_of,
    register_teacher,
    retry_lost_workers_only,
)
from cxrkd.search.trackers import Trackers
from cxrkd.spaces.studies import Role, Study
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

EXPERIMENT = "study"  # the experiment's folder in the run folder


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StudyContext:
    study: Study
    run_uri: str
    storage_uri: str  # the teacher registry lives here, shared by runs on the same storage
    data_ref: object  # ray.ObjectRef of the DataBundle
    trainable: object  # tune.with_parameters(tune_trainable, data=...)
    resources: dict
    max_concurrent: int
    seed: int
    dataset_fingerprint: str
    overrides: dict
    # (stage name, cell key) -> the work on the cell's longest path to the study's end: the
    # order in which free slots take the ready cells' trials (search.schedule).
    levels: dict = field(default_factory=dict)


class _Active:
    """The live context of the experiment this process drives. Tune pickles the driver
    callback in ``tuner.pkl``; the study and the data reference stay out of it (the opened
    cells, resolved, are in the searcher's pickle), and a restored driver finds them here."""

    context: StudyContext | None = None
    driver: StudyDriver | None = None


@dataclass
class TrialResult:
    """What :func:`search.stage.choose` and :func:`search.stage.register_teacher` read of a
    trial (Tune's ``Result``, taken from the live trial)."""

    config: dict
    metrics: dict
    error: str | None
    checkpoint: object

    @classmethod
    def of(cls, trial) -> TrialResult:
        error = (error_line(trial) or "errored") if trial.status == "ERROR" else None
        return cls(trial.config, dict(trial.last_result or {}), error, trial.checkpoint)


class StudyDriver(Callback):
    def __init__(self, searcher: CellSearcher, scheduler: CellScheduler) -> None:
        # Pickled with them in tuner.pkl, so a restored driver holds the restored ones.
        self.searcher, self.scheduler = searcher, scheduler
        self._reset()

    def _reset(self) -> None:
        self.ctx: StudyContext | None = None
        self.failed: str | None = None
        self.complete = False
        self.stages_done: list[str] = []
        self.cells_done: list[str] = []
        self._check = True  # look for ended cells at the next step
        self._ending: dict[str, list] = {}  # cell id -> its ended trials, for the next snapshot
        self._doomed: list[tuple[str, tuple[str, ...]]] = []  # (trial folder, files) to delete
        self._finished: list = []  # trials that completed: their training state goes next
        self._staged: tuple[dict, list] = ({}, [])  # what the snapshot being saved covers

    def __getstate__(self) -> dict:
        return {"searcher": self.searcher, "scheduler": self.scheduler}

    def __setstate__(self, state: dict) -> None:
        self.searcher, self.scheduler = state["searcher"], state["scheduler"]
        self._reset()

    # --- the study's progress ----------------------------------------------------------

    def setup(self, **info) -> None:
        self._reset()
        self.ctx = _Active.context
        if self.ctx is None:
            raise RuntimeError("StudyDriver runs only under search.study_run.run_experiment")
        _Active.driver = self
        self.state, self.stages_done, self.cells_done = read_progress(self.ctx.run_uri)
        for stage in self.stages_done:
            log(f"[{stage}] already done")
        self._open()

    def _open(self) -> None:
        """Open every ready cell; mark finished stages; finish when every stage is."""
        study = self.ctx.study
        cells = dependencies.study_cells(study, self.state, self.ctx.overrides)
        opened = self.searcher.cells
        new = [r for r in cells.ready if cell_id(r.stage.name, r.cell.key) not in opened]
        for stage in study.stages:
            ids = [cell_id(stage.name, r.cell.key) for r in cells.ready if r.stage is stage]
            finished = not cells.waiting[stage.name] and all(c in self.cells_done for c in ids)
            if finished and stage.name not in self.stages_done:
                self.stages_done.append(stage.name)
                log(f"[{stage.name}] done")
        write_state(self.ctx.run_uri, self.state, self.stages_done, self.cells_done)
        default_epochs = int(study.profile.fixed["epochs"])
        for ready in new:
            stage, cell = ready.stage, ready.cell
            if cell_id(stage.name, cell.key) not in self.cells_done:
                log(f"[{stage.name}] cell {cell.key} starts ({cell_budget(cell)} trials)")
            self.searcher.add_cell(
                stage.name,
                cell,
                order=ready.order,
                gate=dependencies.teacher_gate(cell),
                level=level_of(self.ctx.levels, stage.name, cell.key),
            )
            self.scheduler.add_cell(
                stage.name, cell, early_stopping=stage.early_stopping, default_epochs=default_epochs
            )
        if len(self.stages_done) == len(study.stages):
            self.complete = True
            self.searcher.finish()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._check = True
        self._finished.append(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._check = True

    def on_step_begin(self, iteration, trials, **info) -> None:
        """After a trial ended: cells whose trials have all ended wait for the experiment
        snapshot that says so (:meth:`on_snapshot_saved`), so a choice is only ever made from
        trials a resumed driver finds ended too; if none did, the study may be stuck."""
        if self._check and not (self.failed or self.complete):
            self._check = False
            if not self._find_ended(trials):
                self._stalled(trials)

    def _find_ended(self, trials) -> bool:
        """Put every cell whose trials have all ended in ``_ending``; whether one was."""
        by_cell: dict[str, list] = {}
        for trial in trials:
            cid = cell_id(trial.config[STAGE_KEY], trial.config[CELL_KEY])
            by_cell.setdefault(cid, []).append(trial)
        found = False
        for cid, cell in self.searcher.cells.items():
            mine = by_cell.get(cid, [])
            if (
                cid not in self.cells_done
                and cid not in self._ending
                and len(mine) >= cell_budget(cell)
                and all(t.status in ("TERMINATED", "ERROR") for t in mine)
            ):
                self._ending[cid] = mine
                found = True
        return found

    def _chosen(self, cid: str, trials: list):
        """The cell's stage, and what it chose; fails the study when a cell that later ones
        are built from chose nothing."""
        study = self.ctx.study
        stage = next(s for s in study.stages if s.name == self.searcher.stage_of[cid])
        cell = self.searcher.cells[cid]
        results = [TrialResult.of(t) for t in trials]
        chosen = choose(results, metric=study.metric, cells=[cell])
        if stage.role != Role.FINAL and cell.key not in chosen:
            self._fail(nothing_chosen(stage, cell.key, results, study.metric, self.ctx.run_uri))
        return stage, chosen

    def on_experiment_end(self, trials, **info) -> None:
        """Tune ends a restored experiment at once when its search had been stopped because
        a cell chose nothing (the search's own snapshot says it is finished): say why again."""
        if self.failed or self.complete or any(t.status not in ("TERMINATED", "ERROR")
                                               for t in trials):  # fmt: skip
            return
        self._find_ended(trials)
        for cid, ended in self._ending.items():
            if not self.failed:
                self._chosen(cid, ended)

    def _cell_ended(self, cid: str, trials: list) -> None:
        study, ctx = self.ctx.study, self.ctx
        stage, chosen = self._chosen(cid, trials)
        stage_name, cell = stage.name, self.searcher.cells[cid]
        if self.failed:
            return
        if stage.role != Role.FINAL:
            for key, result in chosen.items():
                self.state.best[key] = config_of(result)
            if stage.role == Role.TEACHER:
                uri = register_teacher(ctx, cell.key, chosen[cell.key], self.state)
                log(f"[{stage_name}] teacher {cell.key} registered at {uri}")
        best = chosen.get(cell.key)
        value = best.metrics.get(study.metric) if best is not None else None
        shown = f", best {study.metric}={value:.3f}" if isinstance(value, float) else ""
        log(f"[{stage_name}] cell {cell.key} done ({len(trials)} trials{shown})")
        self.cells_done.append(cid)
        # Its trials can no longer be resumed, so their training state is dead weight (a
        # ResNet-50 checkpoint is ~130 MB); final-stage models stay, for deployment.
        dead = ("state.pt",) if stage.role == Role.FINAL else ("state.pt", "model.pt")
        exp_uri = storage.join(ctx.run_uri, EXPERIMENT)
        self._doomed += [(storage.join(exp_uri, t.storage.trial_dir_name), dead) for t in trials]

    def _fail(self, message: str) -> None:
        """No later cell can start: stop handing out trials and stop the running ones."""
        self.failed = message
        self.searcher.finish()
        self.scheduler.halt()

    # --- what waits for an experiment snapshot on the run storage (search.snapshots) ------

    def get_state(self) -> dict | None:
        # A trial that completed is never resumed once a snapshot has it TERMINATED (an
        # errored one may be retried): its optimiser state (state.pt, 3x the model) goes as
        # soon as that snapshot is saved, not when its whole cell ends. A ViT-Base's is ~1 GB
        # per checkpoint kept; a cell's trials used to hold them all until the cell ended.
        ended = [t for t in self._finished if t.status == "TERMINATED"]
        self._finished = [t for t in self._finished if t.status not in ("TERMINATED", "ERROR")]
        exp_uri = storage.join(self.ctx.run_uri, EXPERIMENT) if ended else None
        self._doomed += [
            (storage.join(exp_uri, t.storage.trial_dir_name), ("state.pt",)) for t in ended
        ]
        self._staged = (dict(self._ending), list(self._doomed))
        return None

    def uncommitted(self) -> bool:
        return bool(self._ending or self._doomed or self._finished)

    def on_snapshot_saved(self) -> None:
        ending, doomed = self._staged
        self._staged = ({}, [])
        self._doomed = [item for item in self._doomed if item not in doomed]
        _delete(doomed)  # trials the snapshot has as ended: never resumed
        try:
            for cid, trials in ending.items():
                del self._ending[cid]
                if not self.failed:
                    self._cell_ended(cid, trials)
            if ending and not self.failed:
                self._open()
                self._check = True  # what the choices opened, or else whether it is stuck
        except Exception as exc:  # Tune logs and drops what its snapshot step raises
            self._fail(str(exc) if isinstance(exc, CxrkdError) else f"{type(exc).__name__}: {exc}")

    def _stalled(self, trials) -> None:
        """Nothing runs, nothing can start, nothing waits for a snapshot, yet the study is
        not finished: say so rather than wait forever. Checked when a trial has ended (only
        then can the last live trial be gone), not at every step."""
        searcher = self.searcher
        if self._ending or self._staged[0] or any(searcher.may_issue(c) for c in searcher.cells):
            return
        if any(t.status not in ("TERMINATED", "ERROR") for t in trials):
            return
        waiting = [s.name for s in self.ctx.study.stages if s.name not in self.stages_done]
        self._fail(
            f"stages {waiting} cannot go on: every trial has ended and no cell is ready to "
            f"start (cells done: {self.cells_done}); this is a bug in cxrkd, please report it"
        )

    def flush(self) -> None:
        """After the experiment ended with every trial finished."""
        doomed, self._doomed = self._doomed, []
        _delete(doomed)


def _delete(items) -> None:
    for folder, names in items:
        storage.delete_files_named(folder, names)


def nothing_chosen(stage, cell: str, results, metric: str, run_uri: str) -> str:
    """The error that stops a study when a cell chose nothing: the later cells need its
    choice (students need their teacher), so none of them starts."""
    reasons: list[str] = []
    for result in results:
        line = (result.error or "")[:300]
        if line and line not in reasons:
            reasons.append(line)
    teacher = stage.role == Role.TEACHER
    what = "teacher cell" if teacher else "cell"
    then = "no student trial was started" if teacher else "no later stage started"
    because = f" (errors: {'; '.join(reasons[:3])})" if reasons else ""
    return (
        f"stage {stage.name!r}: no trial of {what} {cell!r} finished with a finite {metric}, "
        f"so {then}{because}. See `cxrkd search status {run_uri}` for every trial; fix the "
        "cause and start a new run (`cxrkd search resume` keeps what finished but does not "
        "retry errored trials, so it would stop here again)"
    )


def run_experiment(ctx: StudyContext) -> StudyDriver:
    """Fit (or continue) the study's experiment; returns its driver, finished or failed.
    Tune's pickles in the run folder are signed as written and checked before
    ``Tuner.restore`` unpickles them (:mod:`search.signing`)."""
    signer = Signer(ctx.run_uri, EXPERIMENT)
    signer.repair(log=log)
    _Active.context, _Active.driver = ctx, None
    try:
        with signed_tune_state(signer):
            _fit(_tuner(ctx), ctx.max_concurrent)
        driver = _Active.driver
    finally:
        _Active.context = None
    if driver is None:
        raise RuntimeError("the study's experiment ended without setting up its driver")
    if driver.failed:
        raise CxrkdError(driver.failed)
    if not driver.complete:
        # On SIGINT Tune saves the experiment and returns as if it had finished.
        log(f"interrupted; continue with `cxrkd search resume {ctx.run_uri}`")
        raise KeyboardInterrupt
    driver.flush()
    return driver


def _tuner(ctx: StudyContext):
    study, profile = ctx.study, ctx.study.profile
    exp_uri = storage.join(ctx.run_uri, EXPERIMENT)
    trainable = tune.with_resources(ctx.trainable, ctx.resources)
    if tune.Tuner.can_restore(exp_uri):
        return tune.Tuner.restore(
            exp_uri, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    searcher = CellSearcher(metric=study.metric, mode=study.mode, seed=ctx.seed)
    scheduler = CellScheduler(
        metric=study.metric,
        mode=study.mode,
        grace_period=profile.grace_period,
        reduction_factor=profile.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=ctx.max_concurrent),
            scheduler=scheduler,
            num_samples=-1,  # the searcher says when every cell has had its budget
            reuse_actors=True,  # one set of trial processes serves every stage
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=ctx.run_uri,
            verbose=0,
            callbacks=[
                StudyDriver(searcher, scheduler),
                SchedulerState(scheduler),
                *run_callbacks(ctx.run_uri, study.name),  # records, their live Optuna mirror
                ProgressCallback(searcher=searcher, metric=study.metric),
                Trackers(),  # --log-to: TensorBoard, MLflow, W&B (search.trackers)
                LeanTrials(),  # no running statistics of results kept (search.lean_trials)
            ],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        ),
    )


def _fit(tuner, slots: int) -> None:
    with retry_lost_workers_only(), durable_snapshots(), keep_starting_actors(slots):
        tuner.fit()
