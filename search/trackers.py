"""``search run --log-to tensorboard|mlflow|wandb``: every trial in experiment trackers, through
Ray Tune's own logger callbacks.

Each trial is one tracker run named ``STAGE/CELL/TRIAL_ID`` (the cell's stage, its key, Tune's
trial id: what ``search status``, the records and the Optuna studies call it), with its whole
config (``stage`` and ``cell`` among the keys), one step per epoch with every metric the epoch
reported (the columns of ``epochs.parquet``), and, for final-stage trials, the ``test_*``
metrics of their last epoch.

- ``tensorboard``: :class:`ray.tune.logger.TBXLoggerCallback`, writing under the experiment's
  folder, ``RUN/study/tensorboard/STAGE/CELL/TRIAL_ID/`` (Tune uploads it with its snapshots,
  so an S3 run folder gets it too); the config is TensorBoard's hparams of the trial.
- ``mlflow``: :class:`ray.air.integrations.mlflow.MLflowLoggerCallback`, to ``--mlflow-uri``
  or ``MLFLOW_TRACKING_URI`` (given on each command, ``search resume`` too: the run folder
  never chooses where the driver connects, DESIGN.md "Running"), else the SQLite store
  ``RUN/mlflow.db`` when the run folder is local, else nowhere (a note says so). One MLflow
  experiment per run, named as the run; params, tags, one ``log_batch`` per epoch.
- ``wandb``: :class:`ray.air.integrations.wandb.WandbLoggerCallback` (one logging process per
  trial, on the driver's node), project ``WANDB_PROJECT`` or the study's name, group the run's
  name, files in ``WANDB_DIR`` or ``RUN/wandb`` (a local folder under ``$CXRKD_HOME/wandb``
  when the run folder is on S3). ``WANDB_MODE=offline`` (air-gapped sites) never touches the
  network: upload later with ``wandb sync``.

The names are checked before the run starts (:func:`check_trackers`) and kept in ``run.json``
(``log_to``); URLs and keys never are. A tracker that fails (a server that cannot be reached,
a full disk) is one warning line and is dropped for the rest of this driver: the search goes
on, and ``search resume`` tries it again. A resumed trial keeps its MLflow run (found by its
``trial_id`` tag) and its W&B run (its id is the trial id); epochs it runs again are logged
again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

from ray.tune import Callback

from cxrkd.search.optuna_live import warn
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

# --log-to NAME -> the module its extra (pip install "cxrkd[NAME]") installs.
TRACKERS = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
TB_FOLDER = "tensorboard"  # in the experiment's folder, RUN/study/
MLFLOW_DB = "mlflow.db"  # RUN/mlflow.db: the default MLflow store of a local run folder
WANDB_FOLDER = "wandb"
# MLflow retries a failed request 7 times with a backoff doubling from 2 s, each try waiting up
# to 120 s: an unreachable server would hold the driver's loop (every trial waits) for minutes
# per call. While a driver tracks, one retry and 10 s, unless the user set them.
MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
W_OFFLINE = ("offline", "disabled", "dryrun")


def check_trackers(names: list[str] | None, *, mlflow_uri: str | None = None) -> list[str]:
    """``--log-to`` names, each once, in order: unknown ones, a missing package, W&B with no
    key outside offline mode, or ``--mlflow-uri`` without ``mlflow`` are a
    :class:`CxrkdError` before anything is written."""
    names = list(dict.fromkeys(names or ()))
    for name in names:
        if name not in TRACKERS:
            raise CxrkdError(f"--log-to {name!r}: no such tracker; valid: {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise CxrkdError(
                f"--log-to {name} needs the {TRACKERS[name]} package, not installed here; "
                f'install it with `pip install "cxrkd[{name}]"` or leave --log-to {name} out'
            )
    if mlflow_uri and "mlflow" not in names:
        raise CxrkdError(
            f"--mlflow-uri applies to MLflow tracking, but the run logs to {names or 'none'}; "
            "pass --log-to mlflow to `search run`, or leave --mlflow-uri out"
        )
    if "wandb" in names:
        _check_wandb_key()
    return names


def _check_wandb_key() -> None:
    """Online W&B needs a key; without one every trial's logging process would fail."""
    if os.environ.get("WANDB_MODE") in W_OFFLINE or os.environ.get("WANDB_API_KEY"):
        return
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    with contextlib.suppress(OSError, netrc.NetrcParseError):
        if netrc.netrc().authenticators(host or ""):
            return  # `wandb login`
    raise CxrkdError(
        "--log-to wandb: no W&B API key here (WANDB_API_KEY, or `wandb login`); on a machine "
        "without internet set WANDB_MODE=offline and upload the runs later with `wandb sync`"
    )


def mlflow_uri(given: str | None, run_uri: str) -> str | None:
    """Where MLflow logs: ``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else the run
    folder's own SQLite store when it is local, else None."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if storage.is_remote(run_uri):
        return None
    return f"sqlite:///{storage.join(run_uri, MLFLOW_DB)}"


def shown(uri: str) -> str:
    """A URI as printed: a password in it masked."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@", 1)
    return uri


def wandb_dir(run_uri: str) -> str:
    if os.environ.get("WANDB_DIR"):
        return os.environ["WANDB_DIR"]
    if not storage.is_remote(run_uri):
        return storage.join(run_uri, WANDB_FOLDER)
    from cxrkd.trainables.data.store import cxrkd_home

    return str(cxrkd_home() / WANDB_FOLDER / _run_name(run_uri))


class _Active:
    """What this driver logs to (set by :func:`tracking`): Tune pickles the callbacks in
    ``tuner.pkl``, and neither a URL nor the names may come back from there."""

    names: tuple[str, ...] = ()
    run_uri: str = ""
    study: str = ""
    mlflow_uri: str | None = None


@contextlib.contextmanager
def tracking(names, *, run_uri: str, study: str, mlflow_uri_given: str | None = None, log=None):
    """While the study's experiment runs: log to ``names`` (checked: :func:`check_trackers`);
    says where each one logs (``log``, default stderr)."""
    names = tuple(dict.fromkeys(names or ()))
    uri = mlflow_uri(mlflow_uri_given, run_uri) if "mlflow" in names else None
    lines = []
    if "tensorboard" in names:
        folder = storage.join(run_uri, "study", TB_FOLDER)  # "study": search.study_run
        lines.append(f"tensorboard  {folder}  (watch: tensorboard --logdir {folder})")
    if "mlflow" in names and uri is None:
        names = tuple(n for n in names if n != "mlflow")
        lines.append(
            "mlflow       off: the run folder is not local (no SQLite store there); pass "
            "--mlflow-uri URI or set MLFLOW_TRACKING_URI, on `search resume` too"
        )
    elif "mlflow" in names:
        lines.append(f"mlflow       {shown(uri)}  (experiment {_run_name(run_uri)})")
    if "wandb" in names:
        mode, folder = os.environ.get("WANDB_MODE") or "online", wandb_dir(run_uri)
        upload = f" (upload: wandb sync {folder}/wandb/offline-run-*)" if mode == "offline" else ""
        lines.append(f"wandb        {mode}, files in {folder}{upload}")
    for line in lines:
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(line)
    saved = {k: os.environ.get(k) for k in MLFLOW_ENV}
    if "mlflow" in names:
        for key, value in MLFLOW_ENV.items():
            os.environ.setdefault(key, value)
    _Active.names, _Active.run_uri, _Active.study, _Active.mlflow_uri = names, run_uri, study, uri
    try:
        yield
    finally:
        _Active.names, _Active.mlflow_uri = (), None
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_name(run_uri: str) -> str:
    return run_uri.rstrip("/").rsplit("/", 1)[-1]


def trial_label(trial) -> str:
    return f"{trial.config[STAGE_KEY]}/{trial.config[CELL_KEY]}/{trial.trial_id}"


def tracked(result: dict) -> dict:
    """The metrics of an epoch's result (every number the trainable reported: the columns of
    ``epochs.parquet``, less the ids), with Tune's step set to the epoch."""
    from ray.tune.result import AUTO_RESULT_KEYS, TRAINING_ITERATION

    from cxrkd.search.records import SKIP_RESULT_KEYS

    skip = set(AUTO_RESULT_KEYS) | SKIP_RESULT_KEYS | {"experiment_tag"}
    out = {
        k: v
        for k, v in result.items()
        if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)
    }
    out[TRAINING_ITERATION] = int(result.get("epoch") or result[TRAINING_ITERATION])
    return out


def _builders():
    """name -> a function making its Tune callback (imported only when used)."""
    from cxrkd.search.tracker_callbacks import mlflow_callback, tensorboard_callback, wandb_callback

    return {
        "tensorboard": lambda: tensorboard_callback(),
        "mlflow": lambda: mlflow_callback(
            _Active.mlflow_uri, experiment=_run_name(_Active.run_uri), run_uri=_Active.run_uri
        ),
        "wandb": lambda: wandb_callback(
            project=os.environ.get("WANDB_PROJECT") or _Active.study,
            group=_run_name(_Active.run_uri),
            folder=wandb_dir(_Active.run_uri),
        ),
    }


class Trackers(Callback):
    """The trackers of :class:`_Active` as one Tune callback: each hook goes to each of them,
    and a tracker whose hook raises is one warning and is dropped."""

    def __init__(self) -> None:
        self.active: dict[str, Callback] = {}

    def __getstate__(self) -> dict:
        return {}  # no names, no URL: _Active has them

    def __setstate__(self, state: dict) -> None:
        self.active = {}

    def setup(self, **info) -> None:
        self.active = {}
        if not _Active.names:
            return
        builders = _builders()
        for name in _Active.names:
            try:
                callback = builders[name]()
                callback.setup(**info)
            except Exception as exc:
                self._failed(name, exc)
                continue
            self.active[name] = callback

    def _failed(self, name: str, exc: BaseException) -> None:
        self.active.pop(name, None)
        where = f" ({shown(_Active.mlflow_uri)})" if name == "mlflow" and _Active.mlflow_uri else ""
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        warn(
            f"--log-to {name}{where} failed ({type(exc).__name__}: {text}); the search goes on "
            f"without it (`cxrkd search resume` tries it again)"
        )

    def _each(self, hook: str, info: dict) -> None:
        for name, callback in list(self.active.items()):
            try:
                getattr(callback, hook)(**info)
            except Exception as exc:
                self._failed(name, exc)

    def on_trial_start(self, **info) -> None:
        self._each("on_trial_start", info)

    def on_trial_restore(self, **info) -> None:
        self._each("on_trial_restore", info)

    def on_trial_save(self, **info) -> None:
        self._each("on_trial_save", info)

    def on_trial_result(self, **info) -> None:
        self._each("on_trial_result", info)

    def on_trial_complete(self, **info) -> None:
        self._each("on_trial_complete", info)

    def on_trial_error(self, **info) -> None:
        self._each("on_trial_error", info)

    def on_experiment_end(self, **info) -> None:
        self._each("on_experiment_end", info)
        self.active = {}
