"""Grid tables (the MLCAK paper's Tables 1 and 2, and the per-finding AUROC table): one test
metric per (row, column) cell, mean ± std over the seeds of one final-stage cell, its 95%
bootstrap interval and, for a KD cell, the p-value against its no-KD baseline cell, pivoted
into the paper's shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrkd.results.tables import (
    _DASH,
    SHORT_NAMES,
    _fmt_mean_std,
    _hyperparameter_string,
    fmt_interval,
    fmt_p,
)
from cxrkd.results.uncertainty import CellStats

COLUMNS = ["row", "col", "cell", "metric", "n_seeds", "mean", "std", "ci_low", "ci_high"]
COLUMNS += ["vs", "p", "p_method"]
# Multi-label summaries that share the "test_auroc_" prefix with the per-finding columns.
NOT_FINDINGS = ("mlct", "mcct", "mean")


@dataclass(frozen=True)
class PivotEntry:
    row: tuple[str, ...]  # e.g. ("ViT-Tiny", "mlcak", "T1 (MLCT)")
    col: str  # e.g. "28 px"
    cell: str  # the final-stage cell whose seeds give the value
    metric: str  # trials column, e.g. "test_auroc_mlct"


def findings_of(trials: pd.DataFrame) -> list[str]:
    """The findings with a per-finding test AUROC column, in the trials frame's order."""
    prefix = "test_auroc_"
    names = [c[len(prefix) :] for c in trials.columns if c.startswith(prefix)]
    return [n for n in names if n not in NOT_FINDINGS]


def expand_findings(entries: Sequence[PivotEntry], findings: Sequence[str]) -> list[PivotEntry]:
    """Each entry once per finding: column = the finding, metric = its template filled in."""
    return [
        PivotEntry(e.row, f, e.cell, e.metric.format(finding=f)) for e in entries for f in findings
    ]


def pivot_values(
    trials: pd.DataFrame,
    entries: Sequence[PivotEntry],
    *,
    stage: str = "final",
    stats: CellStats | None = None,
    baselines: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Long numeric frame, one row per entry: ``n_seeds``, ``mean``, ``std`` (ddof=1),
    ``ci_low``/``ci_high`` (95% bootstrap interval from ``stats``), and for a cell with a
    baseline in ``baselines``: ``vs`` (the baseline cell), ``p`` and ``p_method``."""
    baselines = baselines or {}
    done = trials[(trials["stage"] == stage) & (trials["status"] == "completed")]
    out = []
    for e in entries:
        sel = done[done["cell"] == e.cell]
        values = (
            sel[e.metric].astype(float) if len(sel) and e.metric in sel else pd.Series(dtype=float)
        )
        low, high = stats.interval(e.cell, e.metric) if stats else (np.nan, np.nan)
        base = baselines.get(e.cell, "")
        test = stats.paired(e.cell, base, e.metric) if stats and base else None
        out.append(
            {
                "row": " / ".join(e.row),
                "col": e.col,
                "cell": e.cell,
                "metric": e.metric,
                "n_seeds": int(values.notna().sum()),
                "mean": values.mean(),
                "std": values.std(ddof=1),
                "ci_low": low,
                "ci_high": high,
                "vs": base,
                "p": test.p_value if test else np.nan,
                "p_method": test.method if test else "",
            }
        )
    return pd.DataFrame(out, columns=COLUMNS)


def pivot_display(
    values: pd.DataFrame, *, row_names: Sequence[str], digits: int = 3, compact: bool = False
) -> pd.DataFrame:
    """Wide display frame: the row labels split into ``row_names`` columns, then per distinct
    ``col`` (first-seen order) its ``mean ± std`` column, its ``95% CI`` column and, when any
    of its cells has a baseline, its ``p`` column. ``compact`` puts all three in one cell
    (``0.812 ± 0.010 [0.790, 0.830] p=0.031``), for tables with many columns."""
    cols = list(dict.fromkeys(values["col"]))
    rows = list(dict.fromkeys(values["row"]))
    cells = {}
    for v in values.itertuples(index=False):
        has_base = isinstance(v.vs, str) and bool(v.vs)
        cells[(v.row, v.col)] = (
            _fmt_mean_std(v.mean, v.std, v.n_seeds, digits),
            fmt_interval(v.ci_low, v.ci_high, digits),
            fmt_p(v.p) if has_base else "",
        )
    paired = {c for (_, c), (_, _, p) in cells.items() if p}
    with_ci = {c for (_, c), (_, ci, _) in cells.items() if ci != _DASH}
    header = []
    for c in cols:
        header += [c]
        if not compact:
            header += [f"{c} 95% CI"] * (c in with_ci) + [f"{c} p"] * (c in paired)
    out = []
    for r in rows:
        line = dict(zip(row_names, r.split(" / "), strict=True))
        for c in cols:
            mean, ci, p = cells.get((r, c), (_DASH, _DASH, ""))
            if compact:
                text = mean if ci == _DASH else f"{mean} {ci}"
                sep = "" if p.startswith("<") else "="
                line[c] = f"{text} p{sep}{p}" if p and p != _DASH else text
            else:
                line[c] = mean
                if c in with_ci:
                    line[f"{c} 95% CI"] = ci
                if c in paired:
                    line[f"{c} p"] = p or ""
        out.append(line)
    return pd.DataFrame(out, columns=[*row_names, *header])


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
