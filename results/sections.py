"""The dashboard's sections: what each shows, built from :mod:`results.figure_data` frames and
drawn by :mod:`results.plots`; a figure that would be empty becomes a note saying why."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field

import optuna
import pandas as pd
import plotly.graph_objects as go

from cxrkd.results import figure_data as F
from cxrkd.results import front, plots
from cxrkd.results.held_out_scores import roc_curves
from cxrkd.results.optuna_export import CellKey, Distributions, plot_notes
from cxrkd.results.table_specs import ParetoSpec
from cxrkd.results.tables import TableError, comparison_table, format_table

# Test metrics of the final models, in display order; the absent ones are left out.
TEST_METRICS = [
    ("test_auc", "AUROC"),
    ("test_auroc_mlct", "AUROC T1 (MLCT)"),
    ("test_auroc_mcct", "AUROC T2 (MCCT)"),
    ("test_auprc", "AUPRC"),
    ("test_auprc_mlct", "AUPRC T1 (MLCT)"),
    ("test_auprc_mcct", "AUPRC T2 (MCCT)"),
    ("test_sens_at_spec95", "sens@95%spec"),
    ("test_sens_at_spec95_mlct", "sens@95%spec T1 (MLCT)"),
    ("test_sens_at_spec95_mcct", "sens@95%spec T2 (MCCT)"),
    ("test_acc_at_val_thr", "accuracy"),
    ("test_precision_at_val_thr", "precision"),
    ("test_recall_at_val_thr", "recall"),
    ("test_f1_at_val_thr", "F1"),
]


@dataclass
class Section:
    """A heading and its parts: HTML strings (tables, notes) and figures, in order."""

    anchor: str
    title: str
    parts: list[str | tuple[go.Figure, int, str | None]] = field(default_factory=list)
    grid: bool = False  # figures three to a row (the search cells)

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, frame: pd.DataFrame) -> None:
        self.parts.append(frame.to_html(index=False, border=0, escape=True, na_rep="–"))

    def figure(self, fig: go.Figure, height: int | None = None, *, caveat: str | None = None):
        """``height`` in px (default: the figure's own, else 450); ``caveat`` is printed
        under the figure, in the same grid cell."""
        self.parts.append((fig, height or fig.layout.height or 450, caveat))


def _searched(distributions: Mapping[CellKey, Distributions] | None, trials) -> dict:
    """Searched parameter names per cell key (any stage), for the final models' table."""
    names: dict[str, list[str]] = {}
    if distributions is not None:
        for (_, cell), dists in distributions.items():
            names.setdefault(cell, [])
            names[cell] += [n for n in dists if n not in names[cell]]
        return names
    searched = F.searched_rows(trials)
    return {cell: F.varying_params(g) for cell, g in searched.groupby("cell", sort=False)}


def overview(trials, *, metric, mode, stages, distributions) -> Section:
    sec = Section("overview", "Overview")
    counts = F.trial_counts(trials, stages=stages)
    if counts.empty:
        sec.note("No trial has reported yet.")
        return sec
    sec.table(counts)
    sec.figure(plots.counts_figure(counts), 380)
    params = None
    if distributions is not None:
        params = {k: list(v) for k, v in distributions.items()}
    searched = F.searched_rows(trials)
    best = F.best_trials(searched, metric=metric, mode=mode, params=params, stages=stages)
    sec.parts.append(f"<h3>Best configuration per cell (by {html.escape(metric)})</h3>")
    if len(best):
        sec.table(best)
    else:
        sec.note(f"No trial has reported {metric} yet.")
    final = F.final_rows(trials)
    sec.parts.append("<h3>Final models on test (mean ± std over seeds)</h3>")
    metrics = [(c, n) for c, n in TEST_METRICS if not F.missing_columns(final, [c])]
    if "test_auroc_mcct" in dict(metrics):  # the same numbers as test_auc, ... on multi-label
        same = ("test_auc", "test_auprc", "test_sens_at_spec95")
        metrics = [m for m in metrics if m[0] not in same]
    if final.empty or not metrics:
        sec.note("No final-stage model has been tested yet.")
        return sec
    cells = list(dict.fromkeys(final["cell"]))
    searched = _searched(distributions, trials)
    try:
        table = comparison_table(
            trials,
            rows=[(c, c) for c in cells],
            metrics=metrics,
            hyperparams={c: searched.get(c, []) for c in cells},
        )
        sec.table(format_table(table))
    except TableError as exc:
        sec.note(f"The final models' table cannot be built: {exc}")
    return sec


def search(studies: Mapping[CellKey, optuna.Study], *, metric: str) -> Section:
    sec = Section("search", "Search per cell (Optuna)", grid=True)
    if not studies:
        sec.note("No search cell has trials yet.")
    for (stage, cell), study in studies.items():
        title = f"{stage} / {cell}"
        notes = plot_notes(study)
        for kind, draw in (
            ("history", plots.history_figure),
            ("parallel", plots.parallel_figure),
            ("importance", plots.importance_figure),
        ):
            if notes[kind]:
                sec.note(f"{title}, {kind}: {notes[kind]}")
                continue
            caveat = notes["caveat"] if kind == "importance" else None
            sec.figure(draw(study, metric=metric, title=title), 380, caveat=caveat)
    return sec


def pareto(trials, *, teacher_stages) -> Section:
    sec = Section("pareto", "Pareto fronts: test AUROC against cost")
    points = F.pareto_points(trials, teacher_stages=teacher_stages)
    if points.empty:
        sec.note("No final-stage model has been tested yet.")
        return sec
    for cost in ("latency_ms", "params"):
        if points[cost].notna().any():
            sec.figure(plots.pareto_figure(points, cost=cost, metric_label="AUROC"), 480)
        else:
            sec.note(f"The final models did not record {cost}.")
    return sec


def open_front(trials, spec: ParetoSpec) -> Section:
    """An open search: every trial's validation objectives, its Pareto front highlighted."""
    sec = Section(f"front-{spec.cell}", f"Open search {spec.cell}: validation objectives")
    (quality, _), costs = spec.objectives[0], spec.objectives[1:]
    if not costs:
        sec.note(
            f"Single objective ({quality}): the search section shows its history; the table "
            "lists the chosen configuration."
        )
        return sec
    points = front.search_points(trials, spec)
    if points.empty:
        sec.note(f"No trial of {spec.stage} / {spec.cell} has reported every objective yet.")
        return sec
    on = int(points["front"].sum())
    for cost, _ in costs:
        title = f"{quality} against {cost}: {len(points)} trials, {on} on the front"
        sec.figure(plots.front_figure(points, x=cost, y=quality, title=title), 480)
    if "latency_ms" in dict(costs):
        sec.note(
            "latency_ms is measured by each trial on its own device while other trials run "
            "beside it: on a shared CPU it is noisy."
        )
    return sec


def resolution(trials) -> Section:
    sec = Section("resolution", "AUROC against input resolution")
    missing = F.missing_columns(F.final_rows(trials), F.RESOLUTION_COLUMNS)
    if missing:
        sec.note(f"Not part of this study (its final trials have no {', '.join(missing)}).")
        return sec
    sec.figure(plots.resolution_figure(F.resolution_curves(trials)))
    return sec


def learning(trials, epochs, *, metric, stages) -> Section:
    sec = Section("learning", f"Learning curves ({metric} per epoch)")
    for stage in F.stage_order(trials, stages):
        curves = F.learning_curves(epochs, trials, metric=metric, stage=stage)
        if curves["value"].notna().any():
            sec.figure(plots.learning_figure(curves, metric=metric, stage=stage), 420)
        else:
            sec.note(f"Stage {stage}: no epoch has reported {metric} yet.")
    return sec


def final_models(trials, scores) -> Section:
    sec = Section("final", "Final models: confusion matrices and ROC curves")
    counts = F.confusion_counts(trials)
    if counts.empty:
        sec.note("No confusion counts: no final-stage model has been tested yet.")
    else:
        sec.figure(plots.confusion_figure(counts))
    curves = roc_curves(scores or {})
    if not scores:
        sec.note(
            "No ROC curves: no final model saved its per-image test scores (test_scores.npz "
            "in its last checkpoint; runs made before cxrkd saved them have none)."
        )
    elif curves.empty:
        sec.note(
            f"No ROC curves: the test split of all {len(scores)} final model(s) holds one "
            "class only, where a ROC curve is undefined, or they are multi-class models, whose "
            "one-vs-rest AUROCs are in the tables (see the confusion matrices)."
        )
    else:
        sec.figure(plots.roc_figure(curves, F.operating_points(trials)), 520)
    return sec
