"""The layers import one way: ``trainables`` <- ``spaces`` <- ``results``, ``search`` on top.

The layers are installed as ``cxrkd.<layer>``, so ``from cxrkd.search.x import y`` is an arrow
to ``search``.

Walks every module of the four packages with ``ast`` (top-level and function-level imports
alike, as a late import is still an arrow) and fails on any import that points up or sideways.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each layer may import of the project's own packages.
ALLOWED = {
    "trainables": {"trainables"},
    "spaces": {"trainables", "spaces"},
    "results": {"trainables", "spaces", "results"},
    "search": {"trainables", "spaces", "results", "search"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def arrows() -> list[tuple[str, int, str, str]]:
    """``(file, line, from_layer, to_layer)`` for every import of a project layer."""
    out = []
    for layer in ALLOWED:
        for path in sorted((ROOT / layer).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                if parts[0] != "cxrkd" or len(parts) < 2:
                    continue  # not a layer (the public API, cxrkd/__init__.py, is on top)
                target = parts[1]
                if target in ALLOWED:
                    out.append((str(path.relative_to(ROOT)), line, layer, target))
    return out


def test_the_walk_sees_the_known_arrows():
    seen = {(src, dst) for _, _, src, dst in arrows()}
    # The walk finds real imports (a broken walk would pass the test below vacuously).
    assert {("spaces", "trainables"), ("results", "trainables"), ("search", "results")} <= seen


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_one_way(layer):
    wrong = [
        f"{path}:{line} imports {dst}"
        for path, line, src, dst in arrows()
        if src == layer and dst not in ALLOWED[src]
    ]
    assert not wrong, (
        f"{layer} may import only {sorted(ALLOWED[layer])}; move the shared code down a "
        "layer instead:\n" + "\n".join(wrong)
    )
