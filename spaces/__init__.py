"""Search spaces and study definitions.

A space is a pure function ``space(trial) -> dict | None`` of an Optuna trial, registered
under the name of the method it searches; parameter names equal config fields. Studies
(:mod:`spaces.studies`) say which cells exist and what they fix.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

from trainables.errors import CxrkdError

_MODULES = ("spaces.cnn_baseline", "spaces.transfer", "spaces.kd_logit")

SPACES: dict[str, Callable] = {}


def register_space(name: str) -> Callable:
    def decorate(fn: Callable) -> Callable:
        if name in SPACES:
            raise CxrkdError(f"space {name!r} registered twice")
        SPACES[name] = fn
        return fn

    return decorate


def load_spaces() -> dict[str, Callable]:
    for module in _MODULES:
        importlib.import_module(module)
    return SPACES


def get_space(name: str) -> Callable:
    spaces = load_spaces()
    if name not in spaces:
        close = difflib.get_close_matches(name, spaces, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CxrkdError(f"unknown space {name!r}{hint}; known spaces: {sorted(spaces)}")
    return spaces[name]


def suggest_optimizer(trial) -> dict:
    """The optimisation parameters every method searches."""
    return {
        "lr": trial.suggest_float("lr", 1e-5, 3e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
    }
