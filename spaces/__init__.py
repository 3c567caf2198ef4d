"""Search spaces and study definitions.

A space is a pure function ``space(trial) -> dict | None`` of an Optuna trial, registered
under the name of the method it searches; parameter names equal config fields. Studies
(:mod:`spaces.studies`) say which cells exist and what they fix.
"""

from __future__ import annotations

from collections.abc import Callable

from cxrkd.trainables.registry import Registry

# Every module of this package (not starting with "_") is imported on the first lookup: a
# space or a study is added by adding its file.
SPACES: Registry[Callable] = Registry("space", package=__name__)


def register_space(name: str) -> Callable:
    def decorate(fn: Callable) -> Callable:
        return SPACES.add(name, fn)

    return decorate


def load_spaces() -> dict[str, Callable]:
    return SPACES.all()


def get_space(name: str) -> Callable:
    return SPACES.get(name)


def suggest_optimizer(trial) -> dict:
    """The optimisation parameters every method searches."""
    return {
        "lr": trial.suggest_float("lr", 1e-5, 3e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
    }
