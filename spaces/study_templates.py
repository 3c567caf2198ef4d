"""A study file's profile built from a built-in profile: ``extends`` plus a few fields.

A profile of a study file normally holds its stages fully expanded (``study show`` writes
them so). A profile of a *built-in* study (the file's ``name``) may instead name one of that
study's profiles and change some of its fields; the study's own builder then expands the
stages again, so a change reaches every cell (``fixed.epochs`` is in every cell's config,
``seeds`` in every final cell)::

    name = "pneumonia-kd"
    ...
    [profiles.paper-short]
    extends = "paper"              # a profile of the built-in study pneumonia-kd
    seeds = 5
    fixed = { epochs = 10 }        # merged into paper's fixed (so is teacher_fixed)

Such a profile holds no ``stages``; without ``tables`` it gets the study's registered tables.
Editing ``epochs`` in an expanded profile's ``fixed`` alone would change the schedulers'
budget but no cell: ``extends`` is how to change a profile's size.
"""

from __future__ import annotations

import dataclasses

from cxrkd.spaces.studies import STUDIES, Study
from cxrkd.trainables.errors import CxrkdError

__all__ = ["EXTENDS", "extended_study"]

EXTENDS = "extends"
MERGED = ("fixed", "teacher_fixed", "bounds")  # mappings merged into the base's, not replaced


def extended_study(head: dict, name: str, values: dict, where: str) -> Study:
    """The study ``head["name"]`` under its profile ``values[EXTENDS]`` with the other
    ``values`` (Profile fields, already read) changed, as profile ``name``; the file's other
    head keys (task, dataset, ...) must agree with the built-in study's."""
    values = dict(values)
    base_name = values.pop(EXTENDS)
    if "stages" in values:
        raise CxrkdError(
            f"{where}: a profile that extends {base_name!r} gets its stages from the built-in "
            "study; drop its stages, or drop `extends` and write the whole profile"
        )
    study_name = head.get("name")
    if study_name not in STUDIES.all():
        raise CxrkdError(
            f"{where}.{EXTENDS}: the file's study {study_name!r} is not a built-in study, so "
            f"it has no profile to extend; built-in studies: {sorted(STUDIES.all())}"
        )
    factory, profiles = STUDIES.get(study_name)
    if base_name not in profiles:
        raise CxrkdError(
            f"{where}.{EXTENDS}: study {study_name!r} has no profile {base_name!r}; its "
            f"profiles: {sorted(profiles)}"
        )
    base = profiles[base_name]
    for key in MERGED:
        if key in values:
            values[key] = {**getattr(base, key), **values[key]}
    try:
        study = factory(dataclasses.replace(base, name=name, **values))
    except TypeError as e:
        raise CxrkdError(f"{where}: {e}") from None
    differ = [k for k in ("task", "default_dataset", "metric", "mode")
              if k in head and head[k] != getattr(study, k)]  # fmt: skip
    if differ:
        raise CxrkdError(
            f"{where}: the file's {differ} differ from the built-in study {study_name!r} that "
            "the profile extends; make them equal, or write the whole profile"
        )
    return study
