"""The method registry: one name keys a method here and its space in ``spaces``.

A method is a config dataclass (its own searchable fields) plus ``build(cfg, info, ctx)`` that
returns a :class:`trainables.task.Task`. Adding a method means one new module here, one space
in ``spaces``, and its import in :data:`_MODULES`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from trainables.errors import CxrkdError

_MODULES = (
    "trainables.methods.cnn_baseline",
    "trainables.methods.transfer",
    "trainables.methods.kd_logit",
)


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    build: Callable
    tasks: tuple[str, ...]  # dataset tasks it supports: "binary", "multilabel"
    needs_teacher: bool = False


METHODS: dict[str, Method] = {}


def register_method(
    name: str, *, config: type, tasks: tuple[str, ...], needs_teacher: bool = False
) -> Callable:
    def decorate(build: Callable) -> Callable:
        if name in METHODS:
            raise CxrkdError(f"method {name!r} registered twice")
        METHODS[name] = Method(name, config, build, tasks, needs_teacher)
        return build

    return decorate


def load_methods() -> dict[str, Method]:
    for module in _MODULES:
        importlib.import_module(module)
    return METHODS


def get_method(name: str) -> Method:
    methods = load_methods()
    if name not in methods:
        close = difflib.get_close_matches(name, methods, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CxrkdError(f"unknown method {name!r}{hint}; known methods: {sorted(methods)}")
    return methods[name]
