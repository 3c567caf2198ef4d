"""``cxrkd report RUN``: collect a run's records into parquet, write and print its tables.

Runs at the end of every study and on demand; works on a run that is still going or was
interrupted (it reads whatever records exist).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pandas as pd

from cxrkd.results.confusion_tables import confusion_tables
from cxrkd.results.dashboard import write_study_dashboard
from cxrkd.results.frames import load_records, write_frames
from cxrkd.results.front import front_display, front_table
from cxrkd.results.held_out_scores import load_test_scores
from cxrkd.results.pivot import (
    PivotEntry,
    chosen_configs,
    expand_findings,
    findings_of,
    pivot_display,
    pivot_values,
)
from cxrkd.results.study_tables import study_tables
from cxrkd.results.table_specs import ParetoSpec, Spec, TableSpec, spec_cells, table_rows
from cxrkd.results.tables import comparison_table, format_table, render_markdown, write_tables
from cxrkd.results.teacher_scores import registered_rows
from cxrkd.results.uncertainty import CellStats, UncertaintyError
from cxrkd.trainables import storage
from cxrkd.trainables.data.store import SYNTHETIC_BANNER


def caption_of(study, manifest) -> str:
    parts = [study.profile.banner, f"dataset {manifest.name} ({manifest.kind})"]
    if manifest.synthetic:
        parts.insert(0, SYNTHETIC_BANNER)
    if manifest.task == "multiclass":
        parts.append(
            f"multi-class task of {len(manifest.labels)} classes ({', '.join(manifest.labels)}): "
            "AUC is the one-vs-rest macro AUROC over the classes (its 95% CI from resamples "
            "stratified by class, its p-value a paired bootstrap), accuracy, precision, recall "
            "and F1 are of the argmax (the last three macro over the classes)"
        )
    parts.append("chosen on validation, reported on test")
    return "; ".join(p for p in parts if p)


SPREAD_NOTE = (
    "Each row or cell is a final-stage cell: its configuration, chosen on validation, "
    "re-trained on the profile's seeds and tested once per seed; ± is the sample standard "
    "deviation over those seeds (the re-trained finals), not over test images."
)


def table_caption(spec, base: str, stats: CellStats | None, trials=None) -> str:
    """The run's caption, what ± covers, the spec's own note, and where intervals are."""
    parts = [base]
    if isinstance(spec, TableSpec) and trials is not None:
        missing = recorded_metrics(spec, trials)[1]
        if missing:
            parts.append(
                f"Not recorded by this run (made before cxrkd reported them): {', '.join(missing)}"
            )
    if not isinstance(spec, ParetoSpec):
        parts.append(SPREAD_NOTE)
    if getattr(spec, "note", ""):
        parts.append(spec.note)
    if not isinstance(spec, ParetoSpec) and stats is None:
        parts.append(
            "No per-image test scores were found (test_scores.npz of the final models), so "
            "this table has no 95% CIs and no paired p-values."
        )
    return " ".join(p if p.endswith(".") else f"{p}." for p in parts)


def recorded_metrics(spec: TableSpec, trials: pd.DataFrame) -> tuple[list, list[str]]:
    """``(metrics the trials recorded, display names of those they did not)``: a run made
    before a metric existed still gets its table, and the caption names what is missing."""
    final = trials[(trials["stage"] == "final") & (trials["status"] == "completed")]
    if final.empty:
        return list(spec.metrics), []
    kept = [(c, n) for c, n in spec.metrics if c in trials]
    return kept or list(spec.metrics), [n for c, n in spec.metrics if c not in trials]


def cell_stats(run_uri: str, trials: pd.DataFrame, extra_scores=None) -> CellStats | None:
    """Intervals and paired tests from the final models' saved test scores (None without)."""
    scores = {**load_test_scores(run_uri, trials), **(extra_scores or {})}
    if not scores:
        return None
    try:
        return CellStats(trials, scores)
    except UncertaintyError as exc:
        print(f"cxrkd: note: no confidence intervals: {exc}", file=sys.stderr)
        return None


def with_registered_teachers(run_uri: str, study, manifest, trials: pd.DataFrame):
    """``(trials + one final row per registered teacher the tables show, their scores,
    notes)``: see :mod:`results.teacher_scores`. The dataset is opened only when a teacher
    has not been scored in this run folder before."""
    from cxrkd.trainables.context import DataBundle
    from cxrkd.trainables.data.store import DatasetStore

    def load_data():
        return DataBundle.from_store(DatasetStore.open(manifest.name), splits=("val", "test"))

    cells = [c for spec in study_tables(study) for c in spec_cells(spec)]
    rows, scores, notes = registered_rows(run_uri, trials, cells, load_data)
    if rows.empty:
        return trials, scores, notes
    return pd.concat([trials, rows], ignore_index=True, sort=False), scores, notes


def multiclass_spec(spec: Spec, trials: pd.DataFrame) -> Spec:
    """A binary study's table on a multi-class run: accuracy, precision, recall and F1 are the
    argmax's (``test_acc``, ...; a binary run's are at the validation threshold,
    ``test_acc_at_val_thr``), and metrics a multi-class task does not define (AUPRC,
    sensitivity at 95% specificity) are left out rather than reported as missing."""
    if not isinstance(spec, TableSpec):
        return spec
    renamed = [(column.removesuffix("_at_val_thr"), name) for column, name in spec.metrics]
    return replace(spec, metrics=[m for m in renamed if m[0] in trials] or renamed)


def build_table(
    spec: Spec,
    trials: pd.DataFrame,
    stats: CellStats | None = None,
):
    """``(numeric frame, display frame, extra display frames)`` of one table spec."""
    if isinstance(spec, ParetoSpec):
        numeric = front_table(trials, spec)
        return numeric, front_display(numeric, spec), []
    if isinstance(spec, TableSpec):
        numeric = comparison_table(
            trials,
            rows=table_rows(spec),
            metrics=recorded_metrics(spec, trials)[0],
            hyperparams=spec.hyperparams,
            stats=stats,
            baselines=spec.baselines,
        )
        return numeric, format_table(numeric), []
    entries = [PivotEntry(row, col, cell, metric) for row, col, cell, metric in spec.entries]
    if spec.per_finding:
        entries = expand_findings(entries, findings_of(trials))
    numeric = pivot_values(trials, entries, stats=stats, baselines=spec.baselines)
    extra = []
    if spec.configs:
        extra.append(chosen_configs(trials, list(spec.configs), spec.configs))
    display = pivot_display(numeric, row_names=spec.row_names, compact=spec.per_finding)
    return numeric, display, extra


def write_report(
    run_uri: str,
    study,
    manifest,
    *,
    out: str | None = None,
    echo: bool = True,
    dashboard_dir: str | None = None,
):
    """Tables into ``out`` (default ``<run>/tables``); ``dashboard.html`` and ``optuna.db``
    into ``dashboard_dir`` (default: the run folder)."""
    trials, epochs = load_records(run_uri)
    write_frames(run_uri, trials, epochs)
    out = out or storage.join(run_uri, "tables")
    caption = caption_of(study, manifest)
    shown, teacher_scores, notes = with_registered_teachers(run_uri, study, manifest, trials)
    stats = cell_stats(run_uri, shown, teacher_scores)
    tables = []
    for spec in study_tables(study):
        if manifest.task == "multiclass":
            spec = multiclass_spec(spec, shown)
        numeric, display, extra = build_table(spec, shown, stats)
        title = f"{spec.title} [SYNTHETIC phantom data]" if manifest.synthetic else spec.title
        if manifest.task == "multiclass":
            title = f"{title} [multi-class: {len(manifest.labels)} classes]"
        text = table_caption(spec, caption, stats, shown)
        mine = [notes[c] for c in dict.fromkeys(spec_cells(spec)) if c in notes]
        if mine:
            text = f"{text} Registered teacher not shown: {'; '.join(mine)}."
        write_tables(display, out, spec.stem, numeric=numeric, title=title, caption=text)
        for i, frame in enumerate(extra):
            write_tables(
                frame,
                out,
                f"{spec.stem}_configs{i or ''}",
                numeric=frame,
                title=f"{spec.title}: chosen configurations",
                caption=caption,
            )
        if echo:
            print(render_markdown(display, title=title, caption=text))
        tables.append(numeric)
    for cell, frame in confusion_tables(shown).items():
        title = f"{cell}: test confusion matrix (rows: true class; columns: predicted)"
        note = "Counts summed over the cell's seeds; predicted class = argmax of the softmax."
        write_tables(
            frame,
            out,
            f"confusion_{cell}",
            numeric=frame,
            title=title,
            caption=f"{caption}. {note}",
        )
    write_study_dashboard(
        run_uri, study, trials, epochs, out_dir=dashboard_dir or run_uri, caption=caption
    )
    return tables
