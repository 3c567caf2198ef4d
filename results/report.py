"""``cxrkd report RUN``: collect a run's records into parquet, write and print its tables.

Runs at the end of every study and on demand; works on a run that is still going or was
interrupted (it reads whatever records exist).
"""

from __future__ import annotations

from results.frames import load_records, write_frames
from results.tables import comparison_table, format_table, render_markdown, write_tables
from trainables import storage
from trainables.data.store import SYNTHETIC_BANNER


def caption_of(study, manifest) -> str:
    parts = [study.profile.banner, f"dataset {manifest.name} ({manifest.kind})"]
    if manifest.synthetic:
        parts.insert(0, SYNTHETIC_BANNER)
    parts.append("chosen on validation, reported on test at the validation threshold")
    return "; ".join(p for p in parts if p)


def write_report(run_uri: str, study, manifest, *, out: str | None = None, echo: bool = True):
    trials, epochs = load_records(run_uri)
    write_frames(run_uri, trials, epochs)
    spec = study.table
    table = comparison_table(
        trials, rows=spec.rows, metrics=spec.metrics, hyperparams=spec.hyperparams
    )
    display = format_table(table)
    title = spec.title
    if manifest.synthetic:
        title = f"{title} [SYNTHETIC phantom data]"
    caption = caption_of(study, manifest)
    out = out or storage.join(run_uri, "tables")
    write_tables(display, out, spec.stem, numeric=table, title=title, caption=caption)
    if echo:
        print(render_markdown(display, title=title, caption=caption))
    return table
