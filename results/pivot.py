"""Grid tables (the MLCAK paper's Tables 1 and 2): one test metric per (row, column) cell,
mean ± std over the seeds of one final-stage cell, pivoted into the paper's shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from results.tables import SHORT_NAMES, _fmt_mean_std, _hyperparameter_string


@dataclass(frozen=True)
class PivotEntry:
    row: tuple[str, ...]  # e.g. ("ViT-Tiny", "mlcak", "T1 (MLCT)")
    col: str  # e.g. "28 px"
    cell: str  # the final-stage cell whose seeds give the value
    metric: str  # trials column, e.g. "test_auroc_mlct"


def pivot_values(
    trials: pd.DataFrame, entries: Sequence[PivotEntry], *, stage: str = "final"
) -> pd.DataFrame:
    """Long numeric frame: one row per entry with ``n_seeds``, ``mean``, ``std`` (ddof=1)."""
    done = trials[(trials["stage"] == stage) & (trials["status"] == "completed")]
    out = []
    for e in entries:
        sel = done[done["cell"] == e.cell]
        values = (
            sel[e.metric].astype(float) if len(sel) and e.metric in sel else pd.Series(dtype=float)
        )
        out.append(
            {
                "row": " / ".join(e.row),
                "col": e.col,
                "cell": e.cell,
                "metric": e.metric,
                "n_seeds": int(values.notna().sum()),
                "mean": values.mean(),
                "std": values.std(ddof=1),
            }
        )
    return pd.DataFrame(out, columns=["row", "col", "cell", "metric", "n_seeds", "mean", "std"])


def pivot_display(
    values: pd.DataFrame, *, row_names: Sequence[str], digits: int = 3
) -> pd.DataFrame:
    """Wide display frame: the row labels split into ``row_names`` columns, one column per
    distinct ``col`` in first-seen order, ``mean ± std`` strings."""
    cols = list(dict.fromkeys(values["col"]))
    rows = list(dict.fromkeys(values["row"]))
    cells = {
        (r, c): _fmt_mean_std(m, s, n, digits)
        for r, c, m, s, n in zip(
            values["row"],
            values["col"],
            values["mean"],
            values["std"],
            values["n_seeds"],
            strict=True,
        )
    }
    out = []
    for r in rows:
        labels = r.split(" / ")
        line = dict(zip(row_names, labels, strict=True))
        line.update({c: cells.get((r, c), "–") for c in cols})
        out.append(line)
    return pd.DataFrame(out, columns=[*row_names, *cols])


def chosen_configs(
    trials: pd.DataFrame, cells: Sequence[str], keys: dict[str, list[str]], *, stage="final"
) -> pd.DataFrame:
    """Display frame of each cell's chosen configuration (identical across its seeds)."""
    done = trials[(trials["stage"] == stage) & (trials["status"] == "completed")]
    out = []
    for cell in cells:
        sel = done[done["cell"] == cell]
        wanted = [k for k in keys.get(cell, []) if f"config/{k}" in sel]
        text = _hyperparameter_string(sel, wanted, SHORT_NAMES) if len(sel) else ""
        out.append({"cell": cell, "seeds": str(len(sel)), "hyperparameters": text})
    return pd.DataFrame(out, columns=["cell", "seeds", "hyperparameters"])
