"""cxrkd results: tidy trial/epoch frames, comparison tables (and, later, dashboards).

Extraction functions return DataFrames and are tested directly; writers only lay them out.
"""

from cxrkd.results.frames import dedupe_epochs, load_records, write_frames
from cxrkd.results.tables import (
    STD_NOTE,
    TableError,
    comparison_table,
    format_table,
    render_markdown,
    write_tables,
)

__all__ = [
    "STD_NOTE",
    "TableError",
    "comparison_table",
    "dedupe_epochs",
    "format_table",
    "load_records",
    "render_markdown",
    "write_frames",
    "write_tables",
]
