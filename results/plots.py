"""Thin plotly drawings of the frames :mod:`results.figure_data` extracts (STYLE.md 8).

Every function takes a non-empty frame (the page writes a note instead of calling it on an
empty one) and returns a ``plotly.graph_objects.Figure``; the search-cell figures are
Optuna's own (``optuna.visualization``), not redrawn here.
"""

from __future__ import annotations

import math
import warnings

import optuna
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxrkd.results.figure_data import STATUSES

STATUS_COLORS = {
    "completed": "#2a9d8f",
    "stopped": "#e9c46a",
    "errored": "#e76f51",
    "running": "#8d99ae",
}
ROLE_SYMBOLS = {"teacher": "star", "student": "circle", "baseline": "square"}
PALETTE = px.colors.qualitative.D3
COST_LABELS = {"latency_ms": "latency (ms, batch 1)", "params": "parameters"}


def _colors(keys) -> dict[str, str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(dict.fromkeys(keys))}


def counts_figure(counts: pd.DataFrame) -> go.Figure:
    """Trials per (stage, cell), stacked by status."""
    x = [f"{s} / {c}" for s, c in zip(counts["stage"], counts["cell"], strict=True)]
    fig = go.Figure(
        [
            go.Bar(name=s, x=x, y=counts[s], marker_color=STATUS_COLORS[s])
            for s in STATUSES
            if counts[s].sum() > 0
        ]
    )
    fig.update_layout(barmode="stack", title="Trials per cell by status", yaxis_title="trials")
    return fig


def history_figure(study: optuna.Study, *, metric: str, title: str) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(study, target_name=metric)
    return fig.update_layout(title=f"{title}: history")


def parallel_figure(study: optuna.Study, *, metric: str, title: str) -> go.Figure:
    fig = optuna.visualization.plot_parallel_coordinate(study, target_name=metric)
    return fig.update_layout(title=f"{title}: parameters vs {metric}")


def importance_figure(study: optuna.Study, *, metric: str, title: str) -> go.Figure:
    # Optuna's default evaluator (PED-ANOVA): deterministic and needs no scikit-learn. Its
    # warnings are on the page already (optuna_export.plot_notes), not repeated on stderr.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = optuna.visualization.plot_param_importances(study, target_name=metric)
    return fig.update_layout(title=f"{title}: importances")


def pareto_figure(points: pd.DataFrame, *, cost: str, metric_label: str) -> go.Figure:
    """Mean test metric (± std over seeds) against a cost, the front drawn as a step line."""
    fig = go.Figure()
    for role, group in points.groupby("role", sort=False):
        fig.add_trace(
            go.Scatter(
                x=group[cost],
                y=group["value"],
                error_y={"type": "data", "array": group["std"].fillna(0)},
                mode="markers+text",
                text=group["cell"],
                textposition="top center",
                name=role,
                marker={"size": 12, "symbol": ROLE_SYMBOLS.get(role, "circle")},
            )
        )
    front = points[points[f"front_{cost}"]].sort_values(cost)
    fig.add_trace(
        go.Scatter(
            x=front[cost],
            y=front["value"],
            mode="lines",
            line={"shape": "hv", "dash": "dot", "color": "#555"},
            name="Pareto front",
        )
    )
    fig.update_layout(
        title=f"{metric_label} against {COST_LABELS.get(cost, cost)}",
        xaxis={"title": COST_LABELS.get(cost, cost), "type": "log"},
        yaxis_title=f"test {metric_label}",
    )
    return fig


def front_figure(points: pd.DataFrame, *, x: str, y: str, title: str) -> go.Figure:
    """Every search trial (a colour per model), the Pareto front enlarged and joined."""
    colors = _colors(points["model"])
    fig = go.Figure()
    for (model, on_front), group in points.groupby(["model", "front"], sort=False):
        fig.add_trace(
            go.Scatter(
                x=group[x],
                y=group[y],
                mode="markers",
                name=f"{model} (front)" if on_front else model,
                legendgroup=model,
                marker={
                    "color": colors[model],
                    "size": 14 if on_front else 8,
                    "symbol": "diamond" if on_front else "circle",
                    "line": {"width": 2 if on_front else 0, "color": "#222"},
                },
                hovertext=group["trial_id"] + ": " + group["config"],
            )
        )
    front = points[points["front"]].sort_values(x)
    step = go.Scatter(x=front[x], y=front[y], mode="lines", name="Pareto front")
    fig.add_trace(step.update(line={"shape": "hv", "dash": "dot", "color": "#555"}))
    label = COST_LABELS.get(x, x)
    return fig.update_layout(title=title, xaxis_title=label, yaxis_title=y)


def resolution_figure(curves: pd.DataFrame) -> go.Figure:
    """AUROC against input resolution: a line per KD approach, a panel per (ViT, task)."""
    fig = px.line(
        curves,
        x="resolution",
        y="mean",
        error_y="std",
        color="approach",
        facet_col="task",
        facet_row="model",
        markers=True,
        log_x=True,
        hover_data=["n_seeds"],
        labels={"mean": "test AUROC", "resolution": "input resolution (px)"},
    )
    ticks = sorted(curves["resolution"].unique())
    fig.update_xaxes(tickvals=ticks, ticktext=[str(t) for t in ticks])
    rows = curves["model"].nunique()
    return fig.update_layout(title="AUROC against input resolution", height=300 + 250 * rows)


def learning_figure(curves: pd.DataFrame, *, metric: str, stage: str) -> go.Figure:
    """A line per trial, coloured by cell; stopped trials end in ×, errored ones in ○."""
    colors = _colors(curves["cell"])
    fig = go.Figure()
    for (cell, trial_id), group in curves.groupby(["cell", "trial_id"], sort=False):
        fig.add_trace(
            go.Scatter(
                x=group["epoch"],
                y=group["value"],
                mode="lines",
                line={"color": colors[cell], "width": 1.5},
                name=cell,
                legendgroup=cell,
                showlegend=not any(t.legendgroup == cell for t in fig.data),
                hovertext=f"{cell} {trial_id} ({group['status'].iloc[0]})",
            )
        )
    ends = curves[curves["last"] & curves["status"].isin(["stopped", "errored"])]
    for status, symbol in (("stopped", "x"), ("errored", "circle-open")):
        sel = ends[ends["status"] == status]
        if len(sel):
            fig.add_trace(
                go.Scatter(
                    x=sel["epoch"],
                    y=sel["value"],
                    mode="markers",
                    marker={"symbol": symbol, "size": 11, "color": STATUS_COLORS[status]},
                    name=f"{status} early" if status == "stopped" else status,
                    hovertext=sel["cell"] + " " + sel["trial_id"],
                )
            )
    last = int(curves["epoch"].max())
    fig.update_layout(
        title=f"Learning curves, stage {stage}",
        xaxis={"title": "epoch", "dtick": max(1, round(last / 10)), "range": [0.8, last + 0.2]},
        yaxis_title=metric,
    )
    return fig


def confusion_figure(counts: pd.DataFrame, *, per_row: int = 4) -> go.Figure:
    """One heatmap of test counts (summed over seeds) per final cell."""
    cells = list(dict.fromkeys(counts["cell"]))
    rows, cols = math.ceil(len(cells) / per_row), min(len(cells), per_row)
    seeds = counts.groupby("cell", sort=False)["n_seeds"].max()
    titles = [f"{c} ({seeds[c]} seed{'s' if seeds[c] != 1 else ''})" for c in cells]
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=0.08,
        vertical_spacing=0.3 / rows,
    )
    order = list(dict.fromkeys(counts["actual"]))  # multi-class: the classes, in order
    binary = set(order) == {"negative", "positive"}
    order = ["negative", "positive"] if binary else order
    for i, cell in enumerate(cells):
        grid = (
            counts[counts["cell"] == cell]
            .pivot(index="actual", columns="predicted", values="count")
            .reindex(index=order, columns=order)
        )
        fig.add_trace(
            go.Heatmap(
                z=grid.to_numpy(),
                x=["predicted −", "predicted +"] if binary else [f"→ {c}" for c in order],
                y=["true −", "true +"] if binary else [f"true {c}" for c in order],
                text=grid.to_numpy(),
                texttemplate="%{text}",
                colorscale="Blues",
                showscale=False,
            ),
            row=i // per_row + 1,
            col=i % per_row + 1,
        )
    fig.update_yaxes(autorange="reversed")
    title = "Test confusion matrices at the validation threshold (summed over seeds)"
    if not binary:
        title = "Test confusion matrices, predicted class = argmax (summed over seeds)"
    return fig.update_layout(title=title, height=180 + 260 * rows)


def roc_figure(curves: pd.DataFrame, points: pd.DataFrame) -> go.Figure:
    """Test ROC curves of the final models, a colour per cell, the validation-threshold
    operating point of each model as a dot."""
    colors = _colors(curves["cell"])
    fig = go.Figure()
    for (cell, trial_id), group in curves.groupby(["cell", "trial_id"], sort=False):
        fig.add_trace(
            go.Scatter(
                x=group["fpr"],
                y=group["tpr"],
                mode="lines",
                line={"color": colors[cell]},
                name=f"{cell} (AUC {group['auc'].iloc[0]:.3f})",
                legendgroup=cell,
                hovertext=trial_id,
            )
        )
    sel = points[points["cell"].isin(colors)]
    if len(sel):
        fig.add_trace(
            go.Scatter(
                x=sel["fpr"],
                y=sel["tpr"],
                mode="markers",
                marker={"color": [colors[c] for c in sel["cell"]], "size": 9},
                name="at the validation threshold",
                hovertext=sel["cell"] + " " + sel["trial_id"],
            )
        )
    diag = go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#aaa"})
    fig.add_trace(diag.update(name="chance", showlegend=False))
    return fig.update_layout(
        title="Test ROC curves of the final models",
        xaxis={"title": "false positive rate", "range": [0, 1]},
        yaxis={"title": "true positive rate", "range": [0, 1.02]},
    )
