"""A study file as YAML: the same data as the TOML form (``spaces.study_file``), read strictly.

A study file may come from anyone, so it is read with a :class:`yaml.SafeLoader` (never
``yaml.load``'s other loaders, which can build Python objects) narrowed to what TOML can hold:

- the top level is a mapping; keys are strings;
- a key given twice in one mapping is refused (PyYAML would silently keep the last one);
- anchors and aliases are refused (a study needs none, and they make "billion laughs" bombs);
- YAML 1.1 booleans other than ``true``/``false`` (``yes``, ``no``, ``on``, ``off``) are
  refused: ``model: no`` would be the boolean False, not the string "no";
- null (``~``, ``null``, an empty value) is refused: TOML has none; leave the key out;
- ``1e-4`` is the float 0.0001 (YAML 1.2, as in TOML), not the string "1e-4" of YAML 1.1.

Every refusal is a :class:`CxrkdError` naming the file, line and column and the fix.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from cxrkd.trainables.errors import CxrkdError

__all__ = ["parse_yaml", "to_yaml"]

# A float without a dot (1e-4, 2E+3): YAML 1.1's float pattern needs one, TOML's and 1.2's not.
_EXP_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, aliases, YAML 1.1 booleans and nulls."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"alias *{event.anchor} is not allowed in a study file: write the "
                "value out in full", event.start_mark,
            )  # fmt: skip
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"anchor &{anchor} is not allowed in a study file: write the value "
                "out in full", event.start_mark,
            )  # fmt: skip
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} ({type(key).__name__}) is not a string: quote it",
                    key_node.start_mark,
                )  # fmt: skip
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first at line {seen[key].line + 1}); "
                    "keep one", key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_bool(self, node):
        if node.value.lower() not in ("true", "false"):
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value} is the boolean {self.bool_values[node.value.lower()]}"
                f" in YAML 1.1, rarely what is meant: quote it ('{node.value}') for a string, "
                "or write true/false for a boolean", node.start_mark,
            )  # fmt: skip
        return super().construct_yaml_bool(node)

    def construct_yaml_null(self, node):
        raise yaml.constructor.ConstructorError(
            None, None, "a value is missing (null): a study file holds no nulls; write a value "
            "or leave the key out", node.start_mark,
        )  # fmt: skip


_StrictLoader.add_constructor("tag:yaml.org,2002:bool", _StrictLoader.construct_yaml_bool)
_StrictLoader.add_constructor("tag:yaml.org,2002:null", _StrictLoader.construct_yaml_null)
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))


def parse_yaml(text: str, source: str) -> dict:
    """YAML text -> data (see the module's rules); an error names the file, line and column."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(x for x in (e.context, e.problem) if x)
        raise CxrkdError(f"{source}: not a valid YAML study file{where}: {what}") from None
    except yaml.YAMLError as e:
        raise CxrkdError(f"{source}: not a valid YAML study file: {e}") from None
    if not isinstance(data, dict):
        raise CxrkdError(
            f"{source}: a YAML study file is a mapping (name: ..., profiles: ...) at the top "
            f"level, got {type(data).__name__}"
        )
    return data


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # the reader refuses aliases
        return True


def _list(dumper: _Dumper, value: list) -> yaml.Node:
    """A list of scalars on one line (``[2, 4, 8]``); one holding mappings or lists in blocks."""
    flow = not any(isinstance(v, dict | list) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(list, _list)


def to_yaml(data: dict) -> str:
    """``data`` as YAML: block mappings, lists of scalars in flow style."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
        width=100,
    )  # fmt: skip
