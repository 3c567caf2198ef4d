"""Watch the driver's Tune experiments from inside, and break a trial at a chosen moment.

:func:`install` puts a subclass of the driver's ``ProgressCallback`` into the study's
Tuner (the driver builds its callbacks in ``search.study_run``); everything else about the run
is the product's own. The spy logs every reported result as Tune saw it (before any
deduplication by the driver's records), and calls ``on_saved(stage, trial)`` after Tune
has registered a trial's checkpoint: the trial is then blocked in ``tune.report`` until the
driver asks for its next epoch, so whatever ``on_saved`` does (kill the trial's process, its
node) happens after that checkpoint and before the trial's next epoch, every time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cxrkd.search.study_run as study_run
from cxrkd.trainables.trainable import STAGE_KEY


@dataclass
class Spy:
    on_saved: Callable[[str, object], None] = lambda stage, trial: None
    # (stage, trial_id, epoch, pid, node_id) of every result Tune received, in order
    results: list[tuple[str, str, int, int, str]] = field(default_factory=list)

    def epochs_of(self, trial_id: str) -> list[int]:
        return [r[2] for r in self.results if r[1] == trial_id]

    def rows(self, trial_id: str) -> list[tuple[str, str, int, int, str]]:
        return [r for r in self.results if r[1] == trial_id]


class _Spied(study_run.ProgressCallback):
    """Defined here, not in :func:`install`: Tune pickles its callbacks with the experiment,
    and a class at module level is pickled by name, without the spy (whose ``on_saved`` may
    hold a Ray cluster, which cannot be pickled)."""

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        super().on_trial_result(iteration, trials, trial, result, **info)
        stage = trial.config[STAGE_KEY]
        row = (stage, trial.trial_id, int(result["epoch"]), int(result["pid"]))
        _ACTIVE["spy"].results.append((*row, str(result["node_id"])))

    def on_trial_save(self, iteration, trials, trial, **info) -> None:
        _ACTIVE["spy"].on_saved(trial.config[STAGE_KEY], trial)


_ACTIVE: dict[str, Spy] = {}


def install(monkeypatch, spy: Spy) -> Spy:
    """Use ``spy`` in the study's Tuner until the test ends."""
    monkeypatch.setattr(study_run, "ProgressCallback", _Spied)
    monkeypatch.setitem(_ACTIVE, "spy", spy)
    return spy
