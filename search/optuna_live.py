"""Each search cell's Optuna study in RDB storage while the run goes, so
``optuna-dashboard <url>`` shows the trials as they report and finish.

Where: ``--optuna-storage URL`` (any SQLAlchemy URL: ``sqlite:///...``, ``postgresql://...``),
kept in ``run.json`` so ``search resume`` keeps writing there; by default the SQLite file
``<run>/optuna-live.db`` when the run folder is local, and nothing when it is on S3 (SQLite
needs a local file; a database URL works from anywhere). It is not ``<run>/optuna.db``:
``cxrkd report`` rebuilds that one from the records and replaces it whole, under the
driver's open connection.

What: the mapping of the end-of-run export (:func:`results.optuna_export.trial_fields`): the
same study names, distributions, states, values, intermediate values and user attributes
(``trial_id`` among them). A trial is ``RUNNING`` from its first epoch, each epoch's value an
intermediate value as it is reported; its final state (``COMPLETE``, ``PRUNED``, ``FAIL``)
is written once an experiment snapshot has it ended (:mod:`search.snapshots`), as the
records are, so a trial that a resumed driver runs again was never marked finished. A
resumed driver finds the trials by ``trial_id`` and updates them: nothing is duplicated.

A database error never stops the search: the first is one warning, later ones are counted.
"""

from __future__ import annotations

import contextlib
import sys

import pandas as pd
from ray.tune import Callback

from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

LIVE_DB = "optuna-live.db"
OFF = "none"  # --optuna-storage none: no live mirror


def warn(msg: str) -> None:
    print(f"cxrkd: warning: {msg}", file=sys.stderr, flush=True)


def live_url(option: str | None, run_uri: str) -> str | None:
    """The storage the run mirrors its trials to (None: none), from ``--optuna-storage``."""
    if option == OFF:
        return None
    if option:
        return option
    if storage.is_remote(run_uri):
        return None
    return f"sqlite:///{storage.join(run_uri, LIVE_DB)}"


def resumed_storage(stored: str | None, given: str | None) -> tuple[str | None, str | None]:
    """``(storage, note)`` a resumed driver mirrors to. The live storage is where the driver
    connects, so a database URL comes from the resume's command line (``given``), never from
    ``run.json`` (any node may write the run folder: DESIGN.md, "Running"); without one, the
    mirror is off and the note says how to keep it. The default (the run's own SQLite file,
    ``stored`` None) needs no URL."""
    if given is not None or stored in (None, OFF):
        return (given if given is not None else stored), None
    return OFF, (
        f"optuna live  off: the run was mirrored to {shown(stored)}; pass --optuna-storage "
        "with that URL again to keep mirroring there (the run folder never chooses where the "
        "driver connects)"
    )


def live_note(url: str | None, run_uri: str) -> str:
    """The driver's line on where the trials are mirrored live."""
    if url is not None:
        return f"optuna live  {shown(url)}  (watch: optuna-dashboard {shown(url)})"
    if storage.is_remote(run_uri):
        return (
            "optuna live  none: the run folder is not local (SQLite needs a local file); "
            "pass --optuna-storage sqlite:////abs/path.db or a database URL to watch the "
            "search live, or run `cxrkd report RUN` for its optuna.db"
        )
    return f"optuna live  none (--optuna-storage {OFF})"


def shown(url: str) -> str:
    """The URL as printed: any password masked."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return url


def check_url(url: str | None) -> None:
    """A clear error, before the run starts, for a URL that is not SQLAlchemy's, carries a
    password (run.json keeps the URL, and every node may read the run folder), needs a
    driver that is not installed, or names a database that cannot be reached."""
    if url is None or url == OFF:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    fix = "e.g. --optuna-storage sqlite:////abs/path/optuna.db or postgresql://user@host/db"
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CxrkdError(f"--optuna-storage {url!r} is not a database URL ({exc}); {fix}") from None
    if parsed.password:
        raise CxrkdError(
            f"--optuna-storage {shown(url)} carries a password, which run.json (readable by "
            "every node) would keep; leave it out and give it to the database client instead "
            "(PostgreSQL: ~/.pgpass or PGPASSWORD; MySQL: ~/.my.cnf)"
        )
    try:
        open_storage(url).engine.dispose()
    except ImportError as exc:
        raise CxrkdError(
            f"--optuna-storage {shown(url)}: its database driver is not installed ({exc}); "
            f"install it (PostgreSQL: pip install psycopg2-binary) or {fix}"
        ) from None
    except Exception as exc:
        raise CxrkdError(
            f"--optuna-storage {shown(url)} cannot be opened ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the URL and that the "
            f"database is up, or pass --optuna-storage {OFF}"
        ) from None


def open_storage(url: str):
    import optuna
    from sqlalchemy.engine import make_url

    kwargs: dict = {"pool_pre_ping": True}
    if make_url(url).get_backend_name() in ("postgresql", "mysql"):
        kwargs["connect_args"] = {"connect_timeout": 10}  # unreachable: an error, not a hang
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


class _Active:
    """What the driver mirrors to in this process (set by :func:`mirroring`): Tune pickles the
    callbacks in ``tuner.pkl``, and a resumed run may be given another storage."""

    url: str | None = None
    study = None


@contextlib.contextmanager
def mirroring(url: str | None, study):
    _Active.url, _Active.study = url, study
    try:
        yield
    finally:
        _Active.url, _Active.study = None, None


class LiveStudies:
    """One Optuna study per search cell in ``url``; every write is one transaction, and a
    failed one a warning (the first) and a count."""

    def __init__(self, url: str, *, distributions: dict, metric: str, direction: str) -> None:
        self.url, self.dists, self.metric, self.direction = url, distributions, metric, direction
        self.failures = 0
        self._storage = None
        self._studies: dict[tuple[str, str], int] = {}  # (stage, cell) -> study id
        self._known: dict[str, tuple[int, bool]] = {}  # trial_id -> (storage id, finished)

    def write(self, stage: str, cell: str, row: dict, curve: dict) -> None:
        """Create or update the trial of ``row`` (a records row), with ``curve`` (epoch ->
        metric) as its intermediate values."""
        if (stage, cell) not in self.dists:
            return  # not a search cell (the final stage re-trains)
        try:
            self._write(stage, cell, row, curve)
        except Exception as exc:
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            warn(f"the live Optuna storage {shown(self.url)} could not be written "
                 f"({type(exc).__name__}: {exc}); the search goes on, the end-of-run "
                 "optuna.db has every trial")  # fmt: skip

    def _write(self, stage: str, cell: str, row: dict, curve: dict) -> None:
        from optuna.trial import TrialState, create_trial

        from cxrkd.results.optuna_export import fit_distributions, trial_fields

        study_id = self._study(stage, cell)
        dists = fit_distributions(pd.DataFrame([row]), self.dists[(stage, cell)])
        fields = trial_fields(row, curve, dists=dists, metric=self.metric)
        rdb, tid = self._storage, str(row["trial_id"])
        known = self._known.get(tid)
        if known is None:
            running = {**fields, "state": TrialState.RUNNING, "value": None}
            self._known[tid] = known = (rdb.create_new_trial(study_id, create_trial(**running)),
                                        False)  # fmt: skip
        trial_id, finished = known
        if finished:
            return  # Optuna keeps a finished trial as it is
        for step, value in fields["intermediate_values"].items():
            rdb.set_trial_intermediate_value(trial_id, step, value)
        for key, value in fields["user_attrs"].items():
            rdb.set_trial_user_attr(trial_id, key, value)
        state = fields["state"]
        if state.is_finished():
            value = fields["value"]
            rdb.set_trial_state_values(trial_id, state, None if value is None else [value])
            self._known[tid] = (trial_id, True)

    def _study(self, stage: str, cell: str) -> int:
        if (stage, cell) in self._studies:
            return self._studies[(stage, cell)]
        import optuna

        from cxrkd.results.optuna_export import quiet_optuna, study_name

        if self._storage is None:
            self._storage = open_storage(self.url)
        with quiet_optuna():
            study = optuna.create_study(
                storage=self._storage,
                study_name=study_name(stage, cell),
                direction=self.direction,
                load_if_exists=True,
            )
        for key, value in (("metric", self.metric), ("stage", stage), ("cell", cell)):
            study.set_user_attr(key, value)
        study_id = self._storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False):  # a resumed run's, by their Tune ids
            tid = t.user_attrs.get("trial_id")
            if tid is not None:
                number_id = self._storage.get_trial_id_from_study_id_trial_number(
                    study_id, t.number
                )
                self._known[str(tid)] = (number_id, t.state.is_finished())
        self._studies[(stage, cell)] = study_id
        return study_id

    def close(self) -> None:
        if self._storage is not None:
            with contextlib.suppress(Exception):
                self._storage.engine.dispose()
            self._storage = None
        if self.failures > 1:
            warn(f"{self.failures} writes to the live Optuna storage failed")


class OptunaMirror(Callback):
    """The Tune callback that keeps :class:`LiveStudies` up to date: ``RUNNING`` trials and
    their epochs at once, final states after the snapshot that has them ended (``records``:
    the run's :class:`search.records.RecordsCallback`, whose rows it mirrors)."""

    def __init__(self, records) -> None:
        self.records = records
        self._reset()

    def _reset(self) -> None:
        self.live: LiveStudies | None = None
        self.curves: dict[str, dict[int, float]] = {}
        self._pending: list[tuple[object, str]] = []  # (trial, Tune status) to finish
        self._staged: list[tuple[object, str]] = []
        self._first_step = True

    def __getstate__(self) -> dict:
        return {"records": self.records}  # no connection, no URL: _Active names them

    def __setstate__(self, state: dict) -> None:
        self.records = state["records"]
        self._reset()

    def setup(self, **info) -> None:
        self._reset()
        study = _Active.study
        if _Active.url is None or study is None:
            return
        from cxrkd.results.optuna_export import study_distributions

        self.live = LiveStudies(
            _Active.url,
            distributions=study_distributions(study),
            metric=study.metric,
            direction="maximize" if study.mode == "max" else "minimize",
        )

    def _write(self, trial, status: str | None) -> None:
        try:
            row = self.records.trial_row(trial, status=status)
            cell = (trial.config[STAGE_KEY], trial.config[CELL_KEY])
        except Exception as exc:  # never the search's failure
            self.live.failed(exc)
            return
        self.live.write(*cell, row, self.curves.get(trial.trial_id, {}))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.live is None:
            return
        metric, epoch = result.get(self.live.metric), result.get("epoch")
        if metric is not None and epoch is not None:
            self.curves.setdefault(trial.trial_id, {})[int(epoch)] = float(metric)
        self._write(trial, "RUNNING")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.live is not None:
            self._pending.append((trial, "TERMINATED"))  # Tune sets it after its callbacks

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if self.live is not None:
            self._pending.append((trial, "ERROR"))

    def on_step_begin(self, iteration, trials, **info) -> None:
        """A resumed run: trials that ended in an earlier driver's snapshot (this one may
        never have seen them end) are finished now, if they are not yet."""
        if self._first_step and self.live is not None:
            self._first_step = False
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._write(trial, None)

    def get_state(self) -> dict | None:
        self._staged = list(self._pending)
        return None

    def uncommitted(self) -> bool:
        return bool(self._pending)

    def on_snapshot_saved(self) -> None:
        staged, self._staged = self._staged, []
        for item in staged:
            self._write(*item)
        done = {id(item) for item in staged}
        self._pending = [item for item in self._pending if id(item) not in done]

    def on_experiment_end(self, trials, **info) -> None:
        if self.live is None:
            return
        if not self._pending:  # the final snapshot is up: every ended trial as it ended
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._write(trial, None)
        self.live.close()


def run_callbacks(run_uri: str, study: str) -> list[Callback]:
    """The run's records callback and its live Optuna mirror (which reads its rows)."""
    from cxrkd.search.records import RecordsCallback

    records = RecordsCallback(run_uri=run_uri, study=study)
    return [records, OptunaMirror(records)]


def where(run_uri: str, url: str | None) -> list[str]:
    """The end-of-run lines: where the tables, the dashboard and the Optuna storages are."""
    from cxrkd.results.dashboard import DASHBOARD
    from cxrkd.results.optuna_export import OPTUNA_DB

    db = storage.join(run_uri, OPTUNA_DB)
    lines = [
        f"tables       {storage.join(run_uri, 'tables')}",
        f"dashboard    {storage.join(run_uri, DASHBOARD)}",
        f"optuna       {db}  (open: optuna-dashboard sqlite:///{db})"
        if not storage.is_remote(db)
        else f"optuna       {db}  (copy it here, then: optuna-dashboard sqlite:///optuna.db)",
    ]
    if url is not None:
        lines.append(f"optuna live  {shown(url)}  (open: optuna-dashboard {shown(url)})")
    return lines
