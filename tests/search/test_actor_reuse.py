"""Trial processes are kept: a trial whose own process is being started keeps it (Tune's cached
actor is not handed to it, which made Tune kill the starting process, so a slot never got one),
and an ended trial's process is kept while the searcher can still propose trials (Tune kept one
when no trial was pending at that moment, so every dependency between cells started new ones).
The real study's trial processes: test_study_e2e.py."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.execution.tune_controller import TuneController
from ray.tune.utils.object_cache import _ObjectCache

from cxrkd.search.actor_reuse import keep_starting_actors


def _controller(started: bool, resetting: bool = False):
    trial, actor = object(), object()
    manager = SimpleNamespace(is_actor_started=lambda a: started and a is actor)
    fake = SimpleNamespace(
        _resetting_trials={trial} if resetting else set(),
        _trial_to_actor={trial: actor},
        _actor_manager=manager,
    )
    return fake, trial


def test_a_starting_actor_is_kept_and_tunes_rule_is_back_afterwards(monkeypatch):
    calls = []
    monkeypatch.setattr(
        TuneController, "_maybe_reuse_cached_actor", lambda self, trial: calls.append(trial) or True
    )
    original = TuneController._maybe_reuse_cached_actor
    with keep_starting_actors(2):
        fake, trial = _controller(started=True)
        assert TuneController._maybe_reuse_cached_actor(fake, trial) is False  # keeps its own
        assert calls == []
        fake, trial = _controller(started=False)  # still waiting for resources: Tune decides
        assert TuneController._maybe_reuse_cached_actor(fake, trial) is True
        fake, trial = _controller(started=True, resetting=True)  # Tune's own reset: Tune decides
        assert TuneController._maybe_reuse_cached_actor(fake, trial) is True
        assert len(calls) == 2
    assert TuneController._maybe_reuse_cached_actor is original


class _Trial:
    def __init__(self, shape: str) -> None:
        self.placement_group_factory = shape

    def set_ray_actor(self, actor) -> None:
        pass


class _Actor:
    def set_on_stop(self, callback) -> None:
        pass

    def set_on_error(self, callback) -> None:
        pass


class _Searcher:
    def __init__(self, finished: bool) -> None:
        self.finished = finished

    def is_finished(self) -> bool:
        return self.finished


def _ended(controller, shape: str = "1 CPU"):
    """A trial that ended on a started, healthy actor of ``controller``."""
    trial, actor = _Trial(shape), _Actor()
    controller._trial_to_actor[trial] = actor
    controller._actor_to_trial[actor] = trial
    controller._started_actors.add(actor)
    return trial, actor


def _tune(finished: bool):
    """The parts of Tune's controller that its actor cache uses; no trial is pending."""
    manager = SimpleNamespace(is_actor_started=lambda a: True, is_actor_failed=lambda a: False)
    return SimpleNamespace(
        _reuse_actors=True,
        _search_alg=_Searcher(finished),
        _staged_trials=set(),
        _trial_to_actor={},
        _actor_to_trial={},
        _started_actors=set(),
        _actor_manager=manager,
        _actor_cache=_ObjectCache(may_keep_one=True),
        _remove_actor=lambda tracked_actor: None,
    )


def _end_trials(controller, n: int) -> list:
    """End ``n`` trials one after the other, as Tune does, with its clean-up after each step."""
    kept = []
    for _ in range(n):
        trial, actor = _ended(controller)
        if TuneController._maybe_cache_trial_actor(controller, trial):
            kept.append(actor)
        TuneController._cleanup_cached_actors(controller)
    return [a for a in kept if a in controller._actor_cache._cached_objects["1 CPU"]]


def test_tune_alone_keeps_one_idle_process_when_no_trial_is_pending():
    # The behaviour the patch is for: without it, the second process is stopped.
    assert len(_end_trials(_tune(finished=False), 2)) == 1


def test_every_ended_trials_process_is_kept_while_more_trials_can_come():
    controller = _tune(finished=False)
    with keep_starting_actors(2):
        assert len(_end_trials(controller, 2)) == 2
        # never more than the study's slots
        assert (
            len(_end_trials(controller, 1)) == 0 and controller._actor_cache.num_cached_objects == 2
        )
        # the searcher is done: Tune's own rule again (one kept at most, none at the end)
        controller._search_alg.finished = True
        TuneController._cleanup_cached_actors(controller)
        assert controller._actor_cache.num_cached_objects <= 1
        TuneController._cleanup_cached_actors(controller, force_all=True)
        assert controller._actor_cache.num_cached_objects == 0
    assert len(_end_trials(_tune(finished=False), 2)) == 1  # Tune's rule is back afterwards
