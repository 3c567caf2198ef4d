"""Comparison tables of the final stage: extract (pure DataFrames), format, then write.

``comparison_table`` turns the trials frame into one numeric row per compared model;
``format_table`` renders it for people (``0.913 ± 0.012``, ``11.2M``, ``1.8 ms``); the writers
only lay a display frame out as markdown, LaTeX and html (and the numeric frame as csv).

Spread is the sample standard deviation (ddof=1) over seeds, the usual choice when the seeds
are a sample of possible runs; :data:`STD_NOTE` says so under every written table. With the
final models' per-image test scores (:class:`results.uncertainty.CellStats`) every metric also
gets a 95% bootstrap interval over test images and seeds, and every KD row the p-value of a
paired test against its no-KD baseline row on the same images (:data:`CI_NOTE`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cxrkd.results.stats import N_BOOT
from cxrkd.results.uncertainty import CellStats, is_auroc
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError

STD_NOTE = (
    "Values are mean ± sample standard deviation (ddof=1) over seeds; "
    "'± –' where fewer than two seeds completed."
)
CI_NOTE = (
    f"95% CI: percentile interval of {N_BOOT} bootstrap resamples of the test images (stratified "
    "by the global label, fixed RNG seed); per resample the metric is computed for every "
    "seed's model and averaged over seeds, so the interval covers both the test sample and "
    "the seeds. p: two-sided test of a KD row against its no-KD baseline (same model size and "
    "resolution; named in the 'vs' column where there is one) on the same test images, each "
    "side being the seed ensemble (per image, the mean predicted "
    "probability over its seeds): DeLong's test for a binary AUROC, a paired bootstrap for a "
    "macro AUROC over findings. '–' where the run saved no per-image test scores."
)
# Short names for the hyperparameter column; other config keys are shown as they are.
SHORT_NAMES: Mapping[str, str] = {
    "weight_decay": "wd",
    "temperature": "T",
    "batch_size": "bs",
    "warmup_epochs": "warmup",
}
_FIXED = ("row", "model", "n_seeds", "params", "latency_ms", "hyperparameters", "vs", "p")
_DASH = "–"


class TableError(CxrkdError):
    """A table asked for columns or rows the trials do not have."""


def _fmt_value(value: object) -> str:
    """A config value in 2-3 significant digits: ``3.2e-4``, ``0.62``, ``64``, ``resnet18``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return _DASH
    if v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    if v != 0 and not 1e-2 <= abs(v) < 1e4:
        mantissa, exponent = f"{v:.1e}".split("e")
        return f"{mantissa.removesuffix('.0')}e{int(exponent)}"
    return f"{v:.3g}"


def _hyperparameter_string(sel: pd.DataFrame, keys: list[str], short: Mapping[str, str]) -> str:
    parts = []
    for key in keys:
        column = f"config/{key}"
        # A conditional parameter (T only for vanilla KD, gamma only for MLCAK, ...) is absent
        # from the frame when no trial drew it, and empty in the rows of trials that did not.
        if column not in sel or sel[column].isna().all():
            continue
        values = list(dict.fromkeys(_fmt_value(v) for v in sel[f"config/{key}"]))
        name = short.get(key, key)
        if len(values) == 1:
            parts.append(f"{name}={values[0]}")
        else:  # the final stage retrains one configuration; anything else must be visible
            parts.append(f"{name} differs across seeds ({', '.join(values)})")
    return ", ".join(parts)


def _check_columns(trials: pd.DataFrame, wanted: list[str], what: str) -> None:
    missing = [c for c in wanted if c not in trials]
    if missing:
        have = sorted(c for c in trials.columns if c.startswith(("test_", "config/", "val_")))
        raise TableError(
            f"{what} {missing} not in the trials frame; pick from its columns: {have} "
            "(or rerun the final stage, which records test_*, params and latency_ms)"
        )


def _check_config_keys(keys: set[str]) -> None:
    """Hyperparameters to show must be config fields of some method (a typo fails); a field no
    trial drew has no column and is left out of the string."""
    from cxrkd.trainables.config import TrainConfig, field_names
    from cxrkd.trainables.methods import METHODS

    known = set(field_names(TrainConfig))
    for method in METHODS.all().values():
        known |= set(field_names(method.config_cls))
    unknown = sorted(keys - known)
    if unknown:
        raise TableError(
            f"hyperparameters {[f'config/{k}' for k in unknown]} are no config field of any "
            f"method; pick from {sorted(known)}"
        )


def comparison_table(
    trials: pd.DataFrame,
    *,
    rows: list[tuple[str, str]],
    metrics: list[tuple[str, str]],
    hyperparams: dict[str, list[str]] | None = None,
    stage: str = "final",
    short_names: Mapping[str, str] = SHORT_NAMES,
    stats: CellStats | None = None,
    baselines: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One numeric row per ``(row_key, display name)``, over that cell's completed trials.

    Columns: ``row``, ``model``, ``n_seeds``, per ``(column, name)`` in ``metrics``
    ``<name>_mean``, ``<name>_std``, ``<name>_ci_low`` and ``<name>_ci_high`` (the 95%
    interval from ``stats``; NaN without it), then ``vs`` (the display name of the row's no-KD
    baseline in ``baselines``), ``p`` and ``p_metric`` (the paired test of the first AUROC
    metric against that baseline), ``params``, ``latency_ms`` (median over seeds) and
    ``hyperparameters`` (``config/<key>`` values for the keys in ``hyperparams[row_key]``).
    Rows without a completed trial stay, with NaNs and ``n_seeds`` 0, so partial runs render.
    """
    if not metrics:
        raise TableError("comparison_table needs metrics, e.g. [('test_auc', 'AUC')]")
    hyperparams = hyperparams or {}
    names = [name for _, name in metrics]
    clash = sorted({n for n in names if n in _FIXED or names.count(n) > 1})
    if clash:
        raise TableError(f"metric display names {clash} repeat or clash with {list(_FIXED)}")
    unknown = sorted(set(hyperparams) - {key for key, _ in rows})
    if unknown:
        raise TableError(f"hyperparams given for rows {unknown} not in rows {rows}")
    baselines = dict(baselines or {})
    names_of = dict(rows)
    p_metric = next(((c, n) for c, n in metrics if is_auroc(c)), None)
    done = trials[(trials["stage"] == stage) & (trials["status"] == "completed")]
    if len(done):  # a partial run may not have these columns yet; a finished one must
        _check_columns(trials, [c for c, _ in metrics] + ["params", "latency_ms"], "metrics")
        _check_config_keys({k for ks in hyperparams.values() for k in ks})
    out = []
    for key, model in rows:
        sel = done[done["cell"] == key]
        row: dict[str, object] = {"row": key, "model": model, "n_seeds": len(sel)}
        for column, name in metrics:
            values = sel[column].astype(float) if len(sel) else pd.Series(dtype=float)
            row[f"{name}_mean"] = values.mean()
            row[f"{name}_std"] = values.std(ddof=1)  # NaN for one seed, shown as '± –'
            low, high = stats.interval(key, column) if stats else (np.nan, np.nan)
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
        base = baselines.get(key)
        row["vs"] = names_of.get(base, base) if base else ""
        test = stats.paired(key, base, p_metric[0]) if stats and base and p_metric else None
        row["p"] = test.p_value if test else np.nan
        row["p_metric"] = f"{p_metric[1]}, {test.method}" if test else ""
        params = sel["params"].dropna().unique() if len(sel) else []
        if len(params) > 1:
            raise TableError(
                f"row {key!r} mixes models: params {sorted(params)} across its seeds; its "
                f"final-stage cell should retrain one configuration (check trials of cell {key!r})"
            )
        row["params"] = int(params[0]) if len(params) else pd.NA
        row["latency_ms"] = sel["latency_ms"].astype(float).median() if len(sel) else np.nan
        row["hyperparameters"] = (
            _hyperparameter_string(sel, hyperparams.get(key, []), short_names) if len(sel) else ""
        )
        out.append(row)
    frame = pd.DataFrame(out, columns=_column_order(names))
    frame["n_seeds"] = frame["n_seeds"].astype("int64")
    frame["params"] = frame["params"].astype("Int64")
    return frame


def _column_order(names: list[str]) -> list[str]:
    spread = [c for n in names for c in (f"{n}_mean", f"{n}_std", f"{n}_ci_low", f"{n}_ci_high")]
    paired = ["vs", "p", "p_metric"]
    return ["row", "model", "n_seeds", *spread, *paired, "params", "latency_ms", "hyperparameters"]


def fmt_interval(low: float, high: float, digits: int = 3) -> str:
    """``[0.842, 0.901]``, or '–' when the interval is not known."""
    if pd.isna(low) or pd.isna(high):
        return _DASH
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def fmt_p(p: float) -> str:
    """``0.032``, ``<0.001`` (a bootstrap p is never exactly 0), or '–'."""
    if pd.isna(p):
        return _DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _metric_names(table: pd.DataFrame) -> list[str]:
    return [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]


def _fmt_mean_std(mean: float, std: float, n: int, digits: int) -> str:
    if n == 0 or pd.isna(mean):
        return _DASH
    spread = f"{std:.{digits}f}" if n >= 2 and not pd.isna(std) else _DASH
    return f"{mean:.{digits}f} ± {spread}"


def _fmt_params(count: object) -> str:
    if pd.isna(count):
        return _DASH
    n = int(count)
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _fmt_latency(ms: float) -> str:
    if pd.isna(ms):
        return _DASH
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2g} ms"


def format_table(table: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """The display frame of a :func:`comparison_table`: strings, one column per metric."""
    if "n_seeds" not in table or not _metric_names(table):
        raise TableError(
            f"format_table needs the numeric frame of comparison_table (with n_seeds and "
            f"<name>_mean/<name>_std columns); got columns {list(table.columns)}"
        )
    n = table["n_seeds"].astype(int)
    display = pd.DataFrame({"model": table["model"].astype(str), "seeds": n.astype(str)})
    for name in _metric_names(table):
        display[name] = [
            _fmt_mean_std(m, s, k, digits)
            for m, s, k in zip(table[f"{name}_mean"], table[f"{name}_std"], n, strict=True)
        ]
        if f"{name}_ci_low" in table and table[f"{name}_ci_low"].notna().any():
            display[f"{name} 95% CI"] = [
                fmt_interval(lo, hi, digits)
                for lo, hi in zip(table[f"{name}_ci_low"], table[f"{name}_ci_high"], strict=True)
            ]
    if "vs" in table and (table["vs"].fillna("") != "").any():
        display["vs"] = table["vs"].fillna("").astype(str)
        # '' where a row has no baseline (nothing to test), '–' where its test is missing
        display["p"] = [
            fmt_p(p) if v else "" for p, v in zip(table["p"], display["vs"], strict=True)
        ]
    display["params"] = [_fmt_params(p) for p in table["params"]]
    display["latency"] = [_fmt_latency(v) for v in table["latency_ms"]]
    display["hyperparameters"] = table["hyperparameters"].fillna("").astype(str)
    return display.reset_index(drop=True)


# --- writers: layout only ---------------------------------------------------------------------

_LEFT = ("model", "hyperparameters", "vs")  # text columns; the rest are numbers, right-aligned


def _md_cell(value: object) -> str:
    return str(value).replace("|", r"\|").replace("\n", " ")


def notes_for(display: pd.DataFrame) -> str:
    """:data:`STD_NOTE`, plus :data:`CI_NOTE` when the table shows intervals or p-values."""
    shown = any(str(c).endswith(("95% CI", " p")) or c == "p" for c in display.columns)
    shown = shown or display.astype(str).apply(lambda s: s.str.contains(r"\[\d")).any().any()
    return f"{STD_NOTE} {CI_NOTE}" if shown else STD_NOTE


def render_markdown(display: pd.DataFrame, *, title: str, caption: str) -> str:
    """A pipe table under ``# title``, followed by the caption and :func:`notes_for`."""
    align = [":---" if c in _LEFT else "---:" for c in display.columns]
    lines = [f"# {title}", "", "| " + " | ".join(_md_cell(c) for c in display.columns) + " |"]
    lines.append("| " + " | ".join(align) + " |")
    for values in display.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(v) for v in values) + " |")
    return "\n".join([*lines, "", caption, "", notes_for(display), ""])


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    "<": r"$<$",
    ">": r"$>$",
}


def latex_escape(text: object) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def render_latex_tabular(display: pd.DataFrame) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), one ``\\\\`` per row."""
    spec = "".join("l" if c in _LEFT else "r" for c in display.columns)
    body = [" & ".join(latex_escape(v) for v in row) + r" \\" for row in display.values]
    header = " & ".join(latex_escape(c) for c in display.columns) + r" \\"
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", header, r"\midrule", *body]
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", ""])


def _render_latex(display: pd.DataFrame, *, title: str, caption: str) -> str:
    # Written by hand rather than through DataFrame.to_latex: that needs jinja2 (only a
    # transitive dependency here) and would escape '±' into nothing useful.
    text = latex_escape(f"{title}. {caption} {notes_for(display)}")
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{text}}}",
            render_latex_tabular(display).rstrip("\n"),
            r"\end{table}",
            "",
        ]
    )


def _render_html(display: pd.DataFrame, *, title: str, caption: str) -> str:
    table = display.to_html(index=False, border=0, escape=True, na_rep=_DASH)
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{padding:4px 10px;border-bottom:1px solid #ccc;text-align:right}"
        "td:first-child,th:first-child,td:last-child,th:last-child{text-align:left}"
        "p{color:#444;max-width:60em}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{table}\n<p>{html.escape(caption)}</p>\n"
        f"<p>{html.escape(notes_for(display))}</p>\n</body>\n</html>\n"
    )


def write_tables(
    display: pd.DataFrame,
    out_dir: str,
    stem: str,
    *,
    numeric: pd.DataFrame,
    title: str,
    caption: str,
) -> dict[str, str]:
    """Write ``<stem>.md``, ``.tex``, ``.html`` (from ``display``) and ``.csv`` (``numeric``).

    ``out_dir`` is a local folder or an ``s3://`` URI; returns ``{suffix: uri}``.
    """
    texts = {
        "md": render_markdown(display, title=title, caption=caption),
        "csv": numeric.to_csv(index=False),
        "tex": _render_latex(display, title=title, caption=caption),
        "html": _render_html(display, title=title, caption=caption),
    }
    out_dir = storage.normalize(out_dir)
    written = {}
    for suffix, text in texts.items():
        written[suffix] = storage.join(out_dir, f"{stem}.{suffix}")
        storage.write_text(written[suffix], text)
    return written
