"""The test confusion matrices of a multi-class run's final models, as tables.

One table per final cell (``tables/confusion_<cell>.{md,csv,tex,html}``): rows are the true
classes, columns the predicted ones (the argmax of the softmax), counts summed over the cell's
seeds (the dashboard draws the same counts, :func:`results.figure_data.confusion_counts`).
Binary runs have their counts in the comparison tables (``tp``/``fp``/... at the validation
threshold) and get no such table.
"""

from __future__ import annotations

import pandas as pd

from cxrkd.results.figure_data import confusion_counts, multiclass_confusion

TRUE_COLUMN = "true \\ predicted"


def confusion_tables(trials: pd.DataFrame, *, stage: str = "final") -> dict[str, pd.DataFrame]:
    """``{cell: frame}``: a multi-class run's test confusion matrix per final cell (the
    ``TRUE_COLUMN`` names the true class of each row; one column per predicted class, and
    ``n_seeds``); empty for a run of another task or without tested final models."""
    if not multiclass_confusion(trials):
        return {}
    counts = confusion_counts(trials, stage=stage)
    if counts.empty:
        return {}
    out = {}
    for cell, group in counts.groupby("cell", sort=False):
        order = list(dict.fromkeys(group["actual"]))
        grid = group.pivot(index="actual", columns="predicted", values="count")
        grid = grid.reindex(index=order, columns=order).astype(int)
        frame = grid.rename_axis(index=TRUE_COLUMN, columns=None).reset_index()
        frame["n_seeds"] = int(group["n_seeds"].max())
        out[str(cell)] = frame
    return out
