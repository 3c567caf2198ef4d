"""A study as a TOML file: every profile's study fully expanded, read back exactly. The same
data may be written as YAML (``spaces.study_yaml``: a name ending in .yaml/.yml).

Format (one file, one study, one or more profiles; ``cxrkd study show NAME`` prints one)::

    name = "pneumonia-kd"          # the study's name (its tables are looked up by it)
    task = "binary"                # binary | multilabel
    default_dataset = "phantom-pneumonia"
    default_import = ["phantom", "pneumonia", {}]   # (kind, src, options)
    metric = "val_auc"             # optional, default val_auc (mode: max)

    [profiles.demo]                # Profile fields (name = the table's name)
    samples = 2                    # teacher_samples, seeds, grace_period: the same
    fixed = { img_size = 64, epochs = 4, pretrained = false }
    bounds = { lr = [5e-4, 2e-3] } # optional: name -> [low, high]
    grid = { type = "lowres_kd.Grid", sizes = ["tiny"], factors = [2, 4, 8] }  # optional

    [[profiles.demo.stages]]       # in order; role: teacher | search | final
    name = "teacher"
    role = "teacher"
    early_stopping = true          # optional, default true

    [[profiles.demo.stages.cells]] # a search cell: key + space (+ fixed, num_samples, ...)
    key = "resnet50_teacher"
    space = "transfer"
    num_samples = 2
    fixed = { method = "transfer", model = "resnet50", teacher_path = { teacher_of = "t" } }
    bounds = { lr = [1e-4, 1e-3] }
    choices = { model = [{ value = "resnet18", linked = {} }] }
    objectives = [["val_auroc_mcct", "max"], ["params", "min"]]

    # a final cell: { key = "...", final_of = "<earlier cell>", seeds = 3 }
    # a fixed cell: { key = "...", configs = [{ ... }, ...] }

A profile of a built-in study may instead be ``extends = "paper"`` plus the fields it changes
(``spaces.study_templates``). ``[[profiles.P.tables]]`` belong to ``results.tables_file``.
Teacher references are written ``{ teacher_of = "cell" }``. Unknown keys, a wrong type, a
model name that is neither timm's nor cxrkd's, or bad syntax are refused with a
:class:`CxrkdError` naming where (``profiles.demo.stages[1].cells[2].fixedd``) and what is
known. The study's own checks (references to earlier cells, counts) run as usual.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from typing import Any

from cxrkd.spaces.studies import (
    STUDIES,
    FinalCell,
    FixedCell,
    Profile,
    SearchCell,
    Stage,
    Study,
    StudyGrid,
    TeacherOf,
)
from cxrkd.spaces.study_templates import EXTENDS, extended_study
from cxrkd.trainables.errors import CxrkdError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["dump_study_file", "load_study_text", "parse_toml", "studies_from_data", "to_toml"]

STUDY_KEYS = {"name", "task", "default_dataset", "default_import", "metric", "mode", "profiles"}
STUDY_REQUIRED = {"name", "task", "default_dataset", "default_import", "profiles"}
# besides Profile's fields; tables: results.tables_file; extends: spaces.study_templates
PROFILE_EXTRA = {"stages", "tables", EXTENDS}
STAGE_KEYS = {"name", "role", "early_stopping", "cells"}
SEARCH_KEYS = {"key", "space", "fixed", "num_samples", "bounds", "choices", "objectives"}
FIXED_KEYS = {"key", "configs"}
FINAL_KEYS = {"key", "final_of", "seeds"}
FORMATS = ("toml", "yaml")  # study file formats: TOML (the default) or YAML (spaces.study_yaml)
YAML_SUFFIXES = (".yaml", ".yml")  # a study file named so is YAML; any other name is TOML
MODEL_FIELDS = ("model",)  # config values that name a model (checked against timm and MODELS)


# ---- writing ------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A study value as TOML data: mappings as dicts, tuples as lists, references as tables."""
    if isinstance(value, TeacherOf):
        return {"teacher_of": value.cell}
    if isinstance(value, StudyGrid):
        cls = type(value)
        kind = f"{cls.__module__.removeprefix('cxrkd.spaces.')}.{cls.__qualname__}"
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": kind, **fields}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None:
        raise CxrkdError("a study value is None, which TOML cannot hold; leave the key out")
    return value


def _cell_data(cell) -> dict:
    if isinstance(cell, FinalCell):
        return {"key": cell.key, "final_of": cell.of, "seeds": cell.seeds}
    if isinstance(cell, FixedCell):
        return {"key": cell.key, "configs": _plain(cell.configs)}
    data = {"key": cell.key, "space": cell.space, "num_samples": cell.num_samples,
            "fixed": _plain(cell.fixed)}  # fmt: skip
    if cell.bounds:
        data["bounds"] = _plain(cell.bounds)
    if cell.choices:  # values may be ints (low_res): TOML keys are strings, so a list
        data["choices"] = {
            name: [{"value": _plain(v), "linked": _plain(linked)} for v, linked in opts.items()]
            for name, opts in cell.choices.items()
        }
    if cell.objectives:
        data["objectives"] = _plain(cell.objectives)
    return data


def study_data(studies: list[Study]) -> dict:
    """The file's data for ``studies``: one study under several profiles."""
    first = studies[0]
    head = ("name", "task", "default_dataset", "default_import", "metric", "mode")
    data = {k: _plain(getattr(first, k)) for k in head}
    data["profiles"] = {}
    for study in studies:
        other = [k for k in head if _plain(getattr(study, k)) != data[k]]
        if other:
            raise CxrkdError(f"profiles of study {first.name!r} differ in {other}: one file each")
        profile = {
            f.name: _plain(getattr(study.profile, f.name))
            for f in dataclasses.fields(Profile)
            if f.name != "name" and getattr(study.profile, f.name) not in (None, ())
        }
        profile["stages"] = [
            {"name": s.name, "role": s.role.value, "early_stopping": s.early_stopping,
             "cells": [_cell_data(c) for c in s.cells]}
            for s in study.stages
        ]  # fmt: skip
        data["profiles"][study.profile.name] = profile
    return data


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key) and key.isascii()
    return key if bare else _scalar(key)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    raise CxrkdError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items()) + " }" \
            if value else "{}"  # fmt: skip
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return _scalar(value)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(data: dict, path: tuple[str, ...] = ()) -> str:
    """``data`` as TOML: scalars and small values inline, dicts of dicts as ``[tables]``,
    lists of dicts whose values hold dicts as ``[[arrays of tables]]`` (stages, cells)."""
    lines, nested = [], []
    for key, value in data.items():
        sub = isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values())
        if key in {"profiles", "stages", "cells", "tables"} and (sub or _is_table_array(value)):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_inline(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in nested:
        here = (*path, _key(key))
        if isinstance(value, dict):
            for name, table in value.items():
                out += f"\n[{'.'.join((*here, _key(name)))}]\n" + to_toml(
                    table, (*here, _key(name))
                )
        else:
            for table in value:
                out += f"\n[[{'.'.join(here)}]]\n" + to_toml(table, here)
    return out


def dump_study_file(
    studies: list[Study], tables: dict[str, list[dict]] | None = None, *, fmt: str = "toml"
) -> str:
    """TOML (or, ``fmt="yaml"``, YAML) text of ``studies`` (one study's profiles); ``tables``:
    profile -> table data (``results.tables_file``) placed under each profile."""
    if fmt not in FORMATS:
        raise CxrkdError(f"unknown study file format {fmt!r}; known: {list(FORMATS)}")
    data = study_data(studies)
    for profile, specs in (tables or {}).items():
        if specs:
            data["profiles"][profile]["tables"] = specs
    if fmt == "yaml":
        from cxrkd.spaces.study_yaml import to_yaml  # PyYAML only when asked

        return to_yaml(data)
    return to_toml(data)


# ---- reading ------------------------------------------------------------------------------


def is_yaml(source: str) -> bool:  # a study file's name says its format (YAML_SUFFIXES)
    return str(source).lower().endswith(YAML_SUFFIXES)


def parse_toml(text: str, source: str) -> dict:
    """TOML text -> data; a syntax error names the file, line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CxrkdError(f"{source}: not valid TOML: {e}") from None


def check_keys(data: Any, known: set[str], where: str, required: set[str] = frozenset()) -> dict:
    """``data`` as a table holding only ``known`` keys and every ``required`` one."""
    if not isinstance(data, dict):
        raise CxrkdError(f"{where}: expected a table, got {type(data).__name__} {data!r}")
    unknown = sorted(set(data) - known)
    if unknown:
        at = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise CxrkdError(f"unknown key(s) {at}; known keys there: {sorted(known)}")
    missing = sorted(required - set(data))
    if missing:
        raise CxrkdError(f"{where or 'the file'}: missing key(s) {missing}")
    return data


def _value(value: Any, where: str) -> Any:
    """TOML data -> study values: ``{teacher_of = cell}`` as :class:`TeacherOf`."""
    if isinstance(value, dict):
        if "teacher_of" in value:
            check_keys(value, {"teacher_of"}, where)
            return TeacherOf(str(value["teacher_of"]))
        return {k: _value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_value(v, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def _grid(data: Any, where: str) -> StudyGrid:
    STUDIES.all()  # the study modules define the grid classes
    kinds = {f"{c.__module__.removeprefix('cxrkd.spaces.')}.{c.__qualname__}": c
             for c in StudyGrid.__subclasses__()}  # fmt: skip
    fields = {f.name for c in kinds.values() for f in dataclasses.fields(c)}
    data = dict(check_keys(data, {"type"} | fields, where, {"type"}))
    cls = kinds.get(data.pop("type"))
    if cls is None:
        raise CxrkdError(f"{where}.type: unknown grid type; known: {sorted(kinds)}")
    known = {f.name for f in dataclasses.fields(cls)}
    check_keys(data, known, where)
    return cls(**{k: _value(v, f"{where}.{k}") for k, v in data.items()})


def _cell(data: Any, where: str):
    if isinstance(data, dict) and "final_of" in data:
        d = check_keys(data, FINAL_KEYS, where, FINAL_KEYS)
        return FinalCell(d["key"], of=d["final_of"], seeds=d["seeds"])
    if isinstance(data, dict) and "configs" in data:
        d = check_keys(data, FIXED_KEYS, where, FIXED_KEYS)
        return FixedCell(d["key"], _value(d["configs"], f"{where}.configs"))
    d = check_keys(data, SEARCH_KEYS, where, {"key", "space", "num_samples"})
    choices = {}
    for name, options in d.get("choices", {}).items():
        at = f"{where}.choices.{name}"
        if not isinstance(options, list):
            raise CxrkdError(f"{at}: expected a list of {{ value = ..., linked = {{...}} }}")
        opts = [check_keys(o, {"value", "linked"}, f"{at}[{i}]", {"value"})
                for i, o in enumerate(options)]  # fmt: skip
        choices[name] = {
            _value(o["value"], f"{at}[{i}].value"): _value(o.get("linked", {}), f"{at}[{i}]")
            for i, o in enumerate(opts)
        }
    return SearchCell(
        d["key"], d["space"], _value(d.get("fixed", {}), f"{where}.fixed"), d["num_samples"],
        _value(d.get("bounds", {}), f"{where}.bounds"), choices,
        _value(d.get("objectives", []), f"{where}.objectives"),
    )  # fmt: skip


def _profile_values(data: dict, where: str, drop=("stages", "tables")) -> dict:
    return {k: (_grid(v, f"{where}.grid") if k == "grid" else _value(v, f"{where}.{k}"))
            for k, v in data.items() if k not in drop}  # fmt: skip


def _profile(name: str, data: Any, where: str) -> Profile:
    try:
        return Profile(name=name, **_profile_values(data, where))
    except TypeError as e:
        raise CxrkdError(f"{where}: {e}") from None


def _stages(data: Any, where: str) -> tuple[Stage, ...]:
    if not isinstance(data, list) or not data:
        raise CxrkdError(f"{where}: expected a non-empty array of [[stages]]")
    out = []
    for i, stage in enumerate(data):
        at = f"{where}[{i}]"
        s = check_keys(stage, STAGE_KEYS, at, {"name", "role", "cells"})
        cells = tuple(_cell(c, f"{at}.cells[{j}]") for j, c in enumerate(s["cells"]))
        out.append(Stage(s["name"], s["role"], cells, s.get("early_stopping", True)))
    return tuple(out)


def check_models(study: Study, where: str) -> None:
    """Every model a cell names is timm's or cxrkd's own (no weights are fetched)."""
    import timm  # only when a file is read: torch and timm are heavy

    from cxrkd.trainables.models import MODELS
    from cxrkd.trainables.weights import unknown_model_message

    for stage in study.stages:
        for cell in stage.cells:
            configs = [cell.fixed] if isinstance(cell, SearchCell) else []
            configs += list(getattr(cell, "configs", ()))
            names = [c[f] for c in configs for f in MODEL_FIELDS if f in c]
            if isinstance(cell, SearchCell):
                names += [v for f in MODEL_FIELDS for v in cell.choices.get(f, {})]
            for name in names:
                if name not in MODELS and not timm.is_model(name):
                    message = unknown_model_message(name, MODELS.names() + timm.list_models())
                    raise CxrkdError(f"{where}: cell {cell.key!r}: {message}")


def studies_from_data(data: dict, source: str) -> dict[str, Study]:
    """profile name -> the study under that profile, from a study file's data."""
    check_keys(data, STUDY_KEYS, "", STUDY_REQUIRED)
    profiles = data["profiles"]
    if not isinstance(profiles, dict) or not profiles:
        raise CxrkdError(f"{source}: [profiles.NAME] tables expected, found none")
    head = {k: data[k] for k in ("name", "task", "default_dataset", "metric", "mode") if k in data}
    if not isinstance(data["default_import"], list) or len(data["default_import"]) != 3:
        raise CxrkdError(f"{source}: default_import must be [kind, src, {{options}}]")
    out = {}
    for name, body in profiles.items():
        where = f"profiles.{name}"
        extends = isinstance(body, dict) and EXTENDS in body
        check_keys(body, {f.name for f in dataclasses.fields(Profile)} | PROFILE_EXTRA, where,
                   set() if extends else {"stages"})  # fmt: skip
        if extends:
            values = _profile_values(body, where, drop=("tables",))
            out[name] = extended_study(data, name, values, where)
            continue
        try:
            study = Study(
                **head, default_import=_value(data["default_import"], "default_import"),
                stages=_stages(body["stages"], f"{where}.stages"),
                profile=_profile(name, body, where),
            )  # fmt: skip
        except (TypeError, KeyError) as e:
            raise CxrkdError(f"{source}: {where}: {e}") from None
        check_models(study, f"{source}: {where}")
        out[name] = study
    return out


def load_study_text(text: str, source: str) -> tuple[dict[str, Study], dict]:
    """``(profile -> study, the file's data)`` of a study file's ``text`` (``source``: where it
    was read, for the messages; a name ending in .yaml/.yml is read as YAML, any other as
    TOML)."""
    if is_yaml(source):
        from cxrkd.spaces.study_yaml import parse_yaml

        data = parse_yaml(text, source)
    else:
        data = parse_toml(text, source)
    try:
        return studies_from_data(data, source), data
    except CxrkdError as e:
        msg = str(e)
        raise CxrkdError(msg if msg.startswith(source) else f"{source}: {msg}") from None
