"""Tune's actor reuse without discarding trial processes that are still starting.

A study runs with ``reuse_actors=True``: one set of trial processes serves every stage, and a
new one costs seconds (it imports torch, torchvision and timm: ~7 s of a CPU core). Tune (Ray
2.60, ``TuneController._maybe_reuse_cached_actor``) hands a pending trial the actor of a trial
that just ended even when that pending trial's own actor is already being started, and then
kills the starting one. With trials shorter than a process start (tiny CPU runs, the demo,
the tests), this repeats for every trial: the slot never gets its process, a CPU core is spent
importing torch into processes that are killed, and one trial runs where two could.

:func:`keep_starting_actors` lets a trial whose actor is being started (its resources are
held, its process exists) wait for it; the ended trial's actor stays in Tune's cache for the
next trial, as Tune does when no trial is pending. A trial whose actor still waits for
resources takes the cached actor, as before. What runs, and every result, is unchanged.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def keep_starting_actors():
    """While Tune runs: never give a cached actor to a trial whose own actor is starting."""
    from ray.tune.execution.tune_controller import TuneController

    tune_reuse = TuneController._maybe_reuse_cached_actor

    def maybe_reuse_cached_actor(self, trial) -> bool:
        if trial not in self._resetting_trials:  # Tune answers True for those: keep that
            own = self._trial_to_actor.get(trial)
            if own is not None and self._actor_manager.is_actor_started(own):
                return False  # its process is being started: the cached actor serves another
        return tune_reuse(self, trial)

    TuneController._maybe_reuse_cached_actor = maybe_reuse_cached_actor
    try:
        yield
    finally:
        TuneController._maybe_reuse_cached_actor = tune_reuse
