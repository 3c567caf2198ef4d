"""What the driver keeps of a trial's results: its last result, not Tune's running statistics.

Ray Tune (2.60) keeps, for every trial of an experiment, running statistics of every numeric
value in its results (max, min, mean, last, and the means of the last 5 and the last 10 values,
with a window for each), the flattened config included, and writes them into every experiment
snapshot. Here that was most of the driver's memory per trial: of 176 KB traced per finished
trial (``bench/load_trials.py``, 150 trials, ``tracemalloc``), 68 KB were the windows and ~25 KB
the statistics, and 36 KB the snapshot's text of them.

Nothing in cxrkd reads them: the records, the searcher, the scheduler and the trackers take each
result as it comes, and a trial's last result (``trial.last_result``) stays. Only Tune's
``ExperimentAnalysis.get_best_trial(scope=...)`` would, and the driver does not call it. So a
running trial keeps no windows, and an ended one (completed or errored) keeps no statistics.
"""

from __future__ import annotations

from ray.tune import Callback


def _no_windows(trial) -> None:
    # Read by Tune's _TrainingRunMetadata.update_metric: the window lengths to keep per metric.
    trial.run_metadata._n_steps = ()


def _no_statistics(trial) -> None:
    meta = trial.run_metadata
    meta.metric_analysis = {}  # each assignment drops the snapshot's cached text of them
    meta.metric_n_steps = {}


class LeanTrials(Callback):
    # Tune calls on_trial_start whenever a trial's process starts it: first, after a failure,
    # after a driver's restart.
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        _no_windows(trial)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        _no_statistics(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        _no_statistics(trial)
