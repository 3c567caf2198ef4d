"""``cxrkd report RUN``: collect a run's records into parquet, write and print its tables.

Runs at the end of every study and on demand; works on a run that is still going or was
interrupted (it reads whatever records exist).
"""

from __future__ import annotations

import pandas as pd

from results.dashboard import write_study_dashboard
from results.frames import load_records, write_frames
from results.front import front_display, front_table
from results.pivot import PivotEntry, chosen_configs, pivot_display, pivot_values
from results.tables import comparison_table, format_table, render_markdown, write_tables
from spaces.studies import ParetoSpec, PivotSpec, TableSpec
from trainables import storage
from trainables.data.store import SYNTHETIC_BANNER


def caption_of(study, manifest) -> str:
    parts = [study.profile.banner, f"dataset {manifest.name} ({manifest.kind})"]
    if manifest.synthetic:
        parts.insert(0, SYNTHETIC_BANNER)
    parts.append("chosen on validation, reported on test")
    return "; ".join(p for p in parts if p)


def build_table(spec: TableSpec | PivotSpec | ParetoSpec, trials: pd.DataFrame):
    """``(numeric frame, display frame, extra display frames)`` of one table spec."""
    if isinstance(spec, ParetoSpec):
        numeric = front_table(trials, spec)
        return numeric, front_display(numeric, spec), []
    if isinstance(spec, TableSpec):
        numeric = comparison_table(
            trials, rows=spec.rows, metrics=spec.metrics, hyperparams=spec.hyperparams
        )
        return numeric, format_table(numeric), []
    entries = [PivotEntry(row, col, cell, metric) for row, col, cell, metric in spec.entries]
    numeric = pivot_values(trials, entries)
    extra = []
    if spec.configs:
        extra.append(chosen_configs(trials, list(spec.configs), spec.configs))
    return numeric, pivot_display(numeric, row_names=spec.row_names), extra


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
    tables = []
    for spec in study.tables:
        numeric, display, extra = build_table(spec, trials)
        title = f"{spec.title} [SYNTHETIC phantom data]" if manifest.synthetic else spec.title
        write_tables(display, out, spec.stem, numeric=numeric, title=title, caption=caption)
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
            print(render_markdown(display, title=title, caption=caption))
        tables.append(numeric)
    write_study_dashboard(
        run_uri, study, trials, epochs, out_dir=dashboard_dir or run_uri, caption=caption
    )
    return tables
