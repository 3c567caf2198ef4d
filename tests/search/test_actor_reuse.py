"""A trial whose own trial process is being started keeps it: Tune's cached actor is not
handed to it (which made Tune kill the starting process, so a slot never got one)."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.execution.tune_controller import TuneController

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
    with keep_starting_actors():
        fake, trial = _controller(started=True)
        assert TuneController._maybe_reuse_cached_actor(fake, trial) is False  # keeps its own
        assert calls == []
        fake, trial = _controller(started=False)  # still waiting for resources: Tune decides
        assert TuneController._maybe_reuse_cached_actor(fake, trial) is True
        fake, trial = _controller(started=True, resetting=True)  # Tune's own reset: Tune decides
        assert TuneController._maybe_reuse_cached_actor(fake, trial) is True
        assert len(calls) == 2
    assert TuneController._maybe_reuse_cached_actor is original
