"""Ray Tune's logger callbacks as :mod:`search.trackers` uses them: runs named
``STAGE/CELL/TRIAL_ID``, one step per epoch, the epoch's metrics only (:func:`trackers.tracked`).
Imported only when a run logs to a tracker (the integrations import their packages)."""

from __future__ import annotations

import time
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.utils import flatten_dict

from cxrkd.search.trackers import TB_FOLDER, tracked, trial_label
from cxrkd.trainables import storage
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

# W&B's logging processes get this long to finish when the experiment ends (Tune's default is
# 30 min: a W&B server that went away would hold the end of the run that long).
WANDB_FINISH_S = 120


class _TensorBoard(TBXLoggerCallback):
    """One event folder per trial, ``tensorboard/STAGE/CELL/TRIAL_ID`` in the experiment's
    folder (Tune's driver staging copy of it, uploaded with every snapshot)."""

    def log_trial_start(self, trial) -> None:
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        folder = Path(trial.storage.experiment_driver_staging_path, TB_FOLDER, trial_label(trial))
        folder.mkdir(parents=True, exist_ok=True)
        self._trial_writer[trial] = self._summary_writer_cls(str(folder), flush_secs=30)
        self._trial_result[trial] = {}

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, tracked(result))


def tensorboard_callback() -> TBXLoggerCallback:
    return _TensorBoard()


def _tags(trial) -> dict:
    config = trial.config
    return {
        "trial_id": trial.trial_id,
        "stage": config[STAGE_KEY],
        "cell": config[CELL_KEY],
        "method": str(config.get("method", "")),
    }


class _MLflow(MLflowLoggerCallback):
    """Runs found again by their ``trial_id`` tag (a resumed driver), params and each epoch's
    metrics in one request each (Ray's own logs one request per value)."""

    def __init__(self, tracking_uri: str, *, experiment: str, artifacts: str | None, tags: dict):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment, tags=tags)
        self.artifacts = artifacts

    def setup(self, *args, **kwargs) -> None:
        self.mlflow_util.setup_mlflow(
            tracking_uri=self.tracking_uri,
            experiment_name=self.experiment_name,
            artifact_location=self.artifacts,
        )
        self._trial_runs = {}

    def _client(self):
        return self.mlflow_util._get_client()

    def log_trial_start(self, trial) -> None:
        if trial in self._trial_runs:
            return
        from mlflow.entities import Param

        client, experiment = self._client(), self.mlflow_util.experiment_id
        found = client.search_runs(
            [experiment], filter_string=f"tags.trial_id = '{trial.trial_id}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {**self.tags, **_tags(trial)}
            run_id = client.create_run(
                experiment, run_name=trial_label(trial), tags=tags
            ).info.run_id
            params = flatten_dict(dict(trial.config))
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._trial_runs[trial] = run_id

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric

        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        metrics = tracked(result)
        step = metrics.pop("training_iteration")
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        self._client().log_batch(self._trial_runs[trial], metrics=batch)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial in self._trial_runs:
            run_id = self._trial_runs.pop(trial)
            self._client().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def mlflow_callback(uri: str, *, experiment: str, run_uri: str) -> MLflowLoggerCallback:
    # The default SQLite store keeps artifacts (none are logged now) beside it, not in ./mlruns.
    local = uri.startswith("sqlite:") and not storage.is_remote(run_uri)
    artifacts = storage.join(run_uri, "mlflow-artifacts") if local else None
    return _MLflow(uri, experiment=experiment, artifacts=artifacts, tags={"cxrkd_run": run_uri})


class _Wandb(WandbLoggerCallback):
    """W&B runs named ``STAGE/CELL/TRIAL_ID``; a logging process that failed (no network, a
    bad key) raises here, on the driver, where :class:`trackers.Trackers` warns once."""

    def log_trial_start(self, trial) -> None:
        self.kwargs["name"] = trial_label(trial)
        super().log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, tracked(result))

    def _cleanup_logging_actor(self, trial) -> None:
        import ray

        future = self._trial_logging_futures[trial]
        super()._cleanup_logging_actor(trial)
        ray.get(future, timeout=0)  # finished: its error, if any, is raised here


def wandb_callback(*, project: str, group: str, folder: str) -> WandbLoggerCallback:
    import os

    mode = os.environ.get("WANDB_MODE")
    if not storage.is_remote(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
    return _Wandb(
        project=project,
        group=group,
        upload_timeout=WANDB_FINISH_S,
        # Given to wandb.init in each logging process: a Ray worker's environment is its
        # node's, not this driver's, so WANDB_MODE and WANDB_DIR would not reach it.
        dir=folder,
        resume="allow",
        settings={"console": "off", "x_disable_stats": True, "disable_git": True},
        **({"mode": mode} if mode else {}),
    )
