"""The method registry: one name keys a method here and its space in ``spaces``.

A method is a config dataclass (its own searchable fields) plus ``build(cfg, info, ctx)`` that
returns a :class:`trainables.task.Task`. Adding a method means one new module here and one
space in ``spaces``; both are found by file (no list to edit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cxrkd.trainables.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    build: Callable
    tasks: tuple[str, ...]  # dataset tasks it supports: "binary", "multilabel"
    needs_teacher: bool = False


# Every module of this package (not starting with "_") is imported on the first lookup.
METHODS: Registry[Method] = Registry("method", package=__name__)


def register_method(
    name: str, *, config: type, tasks: tuple[str, ...], needs_teacher: bool = False
) -> Callable:
    def decorate(build: Callable) -> Callable:
        METHODS.add(name, Method(name, config, build, tasks, needs_teacher))
        return build

    return decorate


def load_methods() -> dict[str, Method]:
    return METHODS.all()


def get_method(name: str) -> Method:
    return METHODS.get(name)
