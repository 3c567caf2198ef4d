"""Tune's actor reuse, made to keep every trial process a study will need again.

A study runs with ``reuse_actors=True``: one set of trial processes serves every stage, and a
new one costs seconds (it imports torch, torchvision and timm: ~7 s of a CPU core). Tune (Ray
2.60) loses processes in two ways, both patched here while the study's experiment runs:

- It hands a pending trial the actor of a trial that just ended even when that pending trial's
  own actor is already being started, and then kills the starting one
  (``TuneController._maybe_reuse_cached_actor``). With trials shorter than a process start
  (tiny CPU runs, the demo, the tests), this repeats for every trial: the slot never gets its
  process, a CPU core is spent importing torch into processes that are killed, and one trial
  runs where two could. A trial whose actor is being started (its resources are held, its
  process exists) now waits for it; the ended trial's actor stays in Tune's cache for the next
  trial. A trial whose actor still waits for resources takes the cached actor, as before.
- It keeps at most one idle process when no trial is pending at that moment
  (``_maybe_cache_trial_actor``, ``_cleanup_cached_actors``), and stops the others. In a study
  that moment comes at every dependency: a cell's final re-training waits for its search to
  end, a student for its teacher. The next trials then start new processes. While the searcher
  can still propose trials, an ended trial's process is now kept (up to the study's
  concurrency); once it has proposed its last one, Tune's own rule applies again. Every trial
  of a study asks for the same resources (``tune.with_resources`` once per study), so a kept
  process never holds what another trial's shape needs.

What runs, and every result, is unchanged.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def keep_starting_actors(slots: int):
    """While Tune runs: never give a cached actor to a trial whose own actor is starting, and
    keep up to ``slots`` idle trial processes while more trials can come."""
    from ray.tune.execution.tune_controller import TuneController

    tune_reuse = TuneController._maybe_reuse_cached_actor
    tune_cache = TuneController._maybe_cache_trial_actor
    tune_cleanup = TuneController._cleanup_cached_actors

    def maybe_reuse_cached_actor(self, trial) -> bool:
        if trial not in self._resetting_trials:  # Tune answers True for those: keep that
            own = self._trial_to_actor.get(trial)
            if own is not None and self._actor_manager.is_actor_started(own):
                return False  # its process is being started: the cached actor serves another
        return tune_reuse(self, trial)

    def maybe_cache_trial_actor(self, trial) -> bool:
        cache = self._actor_cache
        if self._search_alg.is_finished() or cache.num_cached_objects >= slots:
            return tune_cache(self, trial)
        # More trials will come: make room for this one process beside those already kept, even
        # if no trial is pending now (Tune keeps as many as trials are staged, or one).
        key, room = trial.placement_group_factory, cache.num_cached_objects + 1
        cache.increase_max(key, by=room)
        try:
            return tune_cache(self, trial)
        finally:
            cache.decrease_max(key, by=room)

    def cleanup_cached_actors(self, force_all: bool = False) -> None:
        if force_all or self._search_alg.is_finished():
            tune_cleanup(self, force_all=force_all)  # the end of the experiment, or no more trials

    patched = {
        "_maybe_reuse_cached_actor": maybe_reuse_cached_actor,
        "_maybe_cache_trial_actor": maybe_cache_trial_actor,
        "_cleanup_cached_actors": cleanup_cached_actors,
    }
    originals = {name: getattr(TuneController, name) for name in patched}
    for name, fn in patched.items():
        setattr(TuneController, name, fn)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(TuneController, name, fn)
