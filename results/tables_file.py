"""The tables part of a study file (``spaces.study_file``), and row labels that follow the
model that ran.

Each profile of a study file may hold its tables as ``[[profiles.P.tables]]``, one per table
spec (:mod:`results.table_specs`), its kind first and then the spec's fields::

    [[profiles.demo.tables]]
    kind = "table"                 # table (TableSpec) | pivot (PivotSpec) | pareto (ParetoSpec)
    rows = [["resnet18_kd", "ResNet-18 KD student"]]
    metrics = [["test_auc", "AUC"]]
    hyperparams = { resnet18_kd = ["lr", "alpha"] }
    title = "..."
    stem = "pneumonia_kd"

A study read from a file gets its file's tables (:func:`use_file_tables`), in place of the
tables registered under its name. Where a row label names a model ("ResNet-18 KD student")
and the row's cell trains another one (``--set resnet18_kd.model=resnet34``, or a file's cell
with another timm model), :func:`follow_models` renames it ("ResNet-34 KD student").
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from cxrkd.results.table_specs import REGISTERED_PREFIX, ParetoSpec, PivotSpec, Spec, TableSpec
from cxrkd.spaces.studies import FinalCell, FixedCell, Role, SearchCell, Study, TeacherOf
from cxrkd.spaces.study_file import check_keys
from cxrkd.trainables.errors import CxrkdError

__all__ = ["MODEL_NAMES", "follow_models", "tables_data", "tables_from_data", "use_file_tables"]

KINDS: dict[str, type] = {"table": TableSpec, "pivot": PivotSpec, "pareto": ParetoSpec}

# timm name -> the name tables print; a model not listed is printed by its timm name.
MODEL_NAMES = {
    "resnet18": "ResNet-18",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "vit_tiny_patch16_224": "ViT-Tiny",
    "vit_small_patch16_224": "ViT-Small",
    "vit_base_patch16_224": "ViT-Base",
}

# study name -> its file's table specs (set by search.study_source when a file is loaded)
_FILE_TABLES: dict[str, list[Spec]] = {}


def use_file_tables(study: str, specs: list[Spec] | None) -> None:
    """The tables of the study named ``study`` are ``specs`` (a study file's) in this process
    (one process drives one run); None: its registered tables again."""
    if specs is None:
        _FILE_TABLES.pop(study, None)
    else:
        _FILE_TABLES[study] = list(specs)


def file_tables(study: str) -> list[Spec] | None:
    return _FILE_TABLES.get(study)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def tables_data(specs: list[Spec]) -> list[dict]:
    """Specs as the file's ``[[tables]]`` data."""
    kind_of = {cls: kind for kind, cls in KINDS.items()}
    return [
        {"kind": kind_of[type(s)], **{f.name: _plain(getattr(s, f.name))
                                      for f in dataclasses.fields(s)}}
        for s in specs
    ]  # fmt: skip


def _typed(tp: Any, value: Any, where: str) -> Any:
    """TOML data as the annotation ``tp`` says (lists as tuples where a tuple is meant)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise CxrkdError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise CxrkdError(f"{where}: expected {len(args)} items, got {value!r}")
            return tuple(
                _typed(a, v, f"{where}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_typed(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise CxrkdError(f"{where}: expected a table, got {value!r}")
        return {k: _typed(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp in (str, int, bool) and not isinstance(value, tp):
        raise CxrkdError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def tables_from_data(data: Any, where: str) -> list[Spec]:
    """A profile's ``tables`` data -> specs; unknown keys and kinds are refused."""
    if not isinstance(data, list):
        raise CxrkdError(f"{where}: expected an array of [[tables]]")
    specs = []
    for i, table in enumerate(data):
        at = f"{where}[{i}]"
        cls = KINDS.get(table.get("kind") if isinstance(table, dict) else None)
        if cls is None:
            raise CxrkdError(f"{at}.kind: expected one of {list(KINDS)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = {n for n, f in fields.items()
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}  # fmt: skip
        check_keys(table, set(fields) | {"kind"}, at, required | {"kind"})
        values = {k: _typed(hints[k], v, f"{at}.{k}") for k, v in table.items() if k != "kind"}
        specs.append(cls(**values))
    return specs


# ---- labels that follow the model ---------------------------------------------------------


def _cells(study: Study) -> dict:
    """Cell key -> the cell that trained it: a final cell under the key of the cell it
    re-trains (usually its own) is looked up once, never in a loop."""
    chosen = {c.key: c for s in study.stages if s.role != Role.FINAL for c in s.cells}
    finals = {c.key: chosen.get(c.of) for s in study.stages if s.role == Role.FINAL
              for c in s.cells if isinstance(c, FinalCell)}  # fmt: skip
    return {**finals, **chosen}


def _model(cells: dict, key: str) -> str | None:
    """The model the table cell ``key`` trained (a final cell's: the cell it re-trains)."""
    cell = cells.get(key.removeprefix(REGISTERED_PREFIX))
    if isinstance(cell, SearchCell):
        return cell.fixed.get("model")
    if isinstance(cell, FixedCell) and cell.configs:
        return cell.configs[0].get("model")
    return None


def _teacher_model(cells: dict, key: str) -> str | None:
    cell = cells.get(key)
    ref = cell.fixed.get("teacher_path") if isinstance(cell, SearchCell) else None
    return _model(cells, ref.cell) if isinstance(ref, TeacherOf) else None


def _rename(label: str, model: str | None) -> str:
    """``label`` with the model name it holds replaced by ``model``'s, if they differ."""
    if model is None:
        return label
    shown = MODEL_NAMES.get(model, model)
    for name in sorted(MODEL_NAMES.values(), key=len, reverse=True):
        if name in label and name != shown:
            return label.replace(name, shown)
    return label


def _label(label: str, cells: dict, key: str) -> str:
    if " -> " in label:  # "teacher -> student"
        teacher, student = label.split(" -> ", 1)
        teacher = _rename(teacher, _teacher_model(cells, key))
        return f"{teacher} -> {_rename(student, _model(cells, key))}"
    return _rename(label, _model(cells, key))


def follow_models(specs: list[Spec], study: Study) -> list[Spec]:
    """Row labels that name a model renamed to the model the row's cell trains."""
    cells = _cells(study)
    out = []
    for spec in specs:
        if isinstance(spec, TableSpec):
            rows = [(key, _label(name, cells, key)) for key, name in spec.rows]
            spec = dataclasses.replace(spec, rows=rows)
        elif isinstance(spec, PivotSpec):
            entries = [((_label(row[0], cells, cell), *row[1:]) if row else row, col, cell, m)
                       for row, col, cell, m in spec.entries]  # fmt: skip
            spec = dataclasses.replace(spec, entries=entries)
        out.append(spec)
    return out
