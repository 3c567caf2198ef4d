"""JSON forms of the search state the driver carries across a restart (:mod:`search.cells`):
an ``OptunaSearch``'s study and sampler, and an ASHA's rungs. Plain values only, so reading
them back runs no code (a pickle would run whatever it names)."""

from __future__ import annotations

import datetime

from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search.optuna import OptunaSearch

SEARCHER_FORMAT = "cxrkd-cell-searcher/2"  # /2: one experiment per study
# The samplers' random states (TPESampler and the RandomSampler it starts with; Optuna 4-5).
SAMPLER_RNGS = ("_rng", "_random_sampler._rng")


def optuna_state(searcher: OptunaSearch) -> dict:
    """An ``OptunaSearch``'s study as JSON: every trial in order (parameters in Optuna's
    internal float form, so categorical values come back as they were), which Tune trial
    is which, and the sampler's random state."""
    from optuna.distributions import distribution_to_json

    trials = []
    for t in searcher._ot_study.get_trials(deepcopy=False):
        trials.append({
            "state": t.state.name,
            "values": t.values,
            "params": {n: d.to_internal_repr(t.params[n]) for n, d in t.distributions.items()},
            "distributions": {n: distribution_to_json(d) for n, d in t.distributions.items()},
            "intermediate": sorted(t.intermediate_values.items()),
            "user_attrs": t.user_attrs,
            "system_attrs": t.system_attrs,
            "start": t.datetime_start and t.datetime_start.isoformat(),
            "complete": t.datetime_complete and t.datetime_complete.isoformat(),
        })  # fmt: skip
    rngs = {}
    for path in SAMPLER_RNGS:
        rng = _attr_path(searcher._ot_study.sampler, f"{path}.rng")
        if rng is not None:
            name, keys, pos, has_gauss, gauss = rng.get_state()
            rngs[path] = [name, keys.tolist(), pos, has_gauss, gauss]
    return {
        "trials": trials,
        "tune_trials": {tid: t.number for tid, t in searcher._ot_trials.items()},
        "completed": sorted(searcher._completed_trials),
        "rngs": rngs,
    }


def restore_optuna(searcher: OptunaSearch, saved: dict) -> None:
    """Refill ``searcher`` (as unpickled from ``tuner.pkl``: same space, metric, sampler)
    from :func:`optuna_state`: a fresh study, its trials added in order (running ones too,
    so Tune's resumed trials complete into it), the sampler's random state as it was."""
    import numpy as np
    import optuna
    from optuna.distributions import json_to_distribution

    searcher._setup_study(searcher._mode)  # a fresh, empty study with the same sampler
    study = searcher._ot_study
    for t in saved["trials"]:
        dists = {n: json_to_distribution(d) for n, d in t["distributions"].items()}
        study.add_trial(optuna.trial.FrozenTrial(
            number=-1, trial_id=-1, state=optuna.trial.TrialState[t["state"]], value=None,
            values=t["values"],
            params={n: d.to_external_repr(t["params"][n]) for n, d in dists.items()},
            distributions=dists,
            intermediate_values={int(step): v for step, v in t["intermediate"]},
            user_attrs=t["user_attrs"], system_attrs=t["system_attrs"],
            datetime_start=_when(t["start"]), datetime_complete=_when(t["complete"]),
        ))  # fmt: skip
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    searcher._ot_trials = {
        tid: optuna.trial.Trial(study, by_number[n]._trial_id)
        for tid, n in saved["tune_trials"].items()
    }
    searcher._completed_trials = set(saved["completed"])
    for path, (name, keys, pos, has_gauss, gauss) in saved["rngs"].items():
        rng = _attr_path(study.sampler, f"{path}.rng")
        if rng is not None:
            rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _when(text: str | None) -> datetime.datetime | None:
    return None if text is None else datetime.datetime.fromisoformat(text)


def _attr_path(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name, None)
    return obj


def asha_state(asha: AsyncHyperBandScheduler) -> dict:
    """Per bracket, each rung's milestone and recorded results; which bracket each trial is
    in; the counters."""
    brackets = asha._brackets
    return {
        "counter": asha._counter,
        "num_stopped": asha._num_stopped,
        "trial_bracket": {tid: brackets.index(b) for tid, b in asha._trial_info.items()},
        "rungs": [
            [
                [milestone, {tid: float(v) for tid, v in recorded.items()}]
                for milestone, recorded in bracket._rungs
            ]
            for bracket in brackets
        ],
    }


def restore_asha(asha: AsyncHyperBandScheduler, saved: dict) -> None:
    brackets = asha._brackets
    for bracket, rungs in zip(brackets, saved["rungs"], strict=False):
        recorded = {float(milestone): values for milestone, values in rungs}
        for milestone, current in bracket._rungs:  # the same milestones: same study
            current.clear()
            current.update(recorded.get(float(milestone), {}))
    asha._trial_info = {tid: brackets[i] for tid, i in saved["trial_bracket"].items()}
    asha._counter, asha._num_stopped = saved["counter"], saved["num_stopped"]
