"""Which checkpoint of a run is a cell's final model, and its decision threshold.

A final-stage trial re-trains a cell's chosen configuration on one seed and is tested at the
threshold chosen on validation; its last checkpoint (``model.pt``, ``config.json``,
``test_scores.npz``) stays in the run's experiment folder (the driver deletes only
``state.pt``/``model.pt`` of the stages before). :func:`final_model` picks one and
:func:`fetch_checkpoint` brings its files to a local folder.
"""

from __future__ import annotations

import difflib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrkd.results.figure_data import final_rows
from cxrkd.results.held_out_scores import locate_test_scores
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError

# The threshold the final trial's test metrics used: the validation threshold of its last
# epoch (Youden's J on validation; ``trainables.evaluate.val_threshold``).
THRESHOLD_COLUMN = "test_threshold"


@dataclass(frozen=True)
class FinalModel:
    cell: str
    seed: int
    trial_id: str
    checkpoint_uri: str  # the folder holding model.pt and config.json
    threshold: float | None  # None for a multi-class model: its decision is the argmax
    metric: str  # what chose the seed when none was given
    value: float  # the seed's value of ``metric``


def _seed_of(frame: pd.DataFrame) -> pd.Series:
    if "config/seed" not in frame:
        return pd.Series(0, index=frame.index)
    return pd.to_numeric(frame["config/seed"], errors="coerce").fillna(0).astype(int)


def final_model(
    run_uri: str,
    trials: pd.DataFrame,
    *,
    cell: str,
    seed: int | None = None,
    stage: str = "final",
    metric: str = "val_auc",
    mode: str = "max",
    needs_threshold: bool = True,
) -> FinalModel:
    """The final model of ``cell``: its trial of ``seed``, else the seed best in the
    validation ``metric`` (ties and missing values: the lowest seed). ``needs_threshold``:
    its validation threshold must be recorded (binary and multi-label tasks; a multi-class
    model decides by the argmax and has none)."""
    rows = final_rows(trials, stage=stage) if len(trials) else trials
    if rows.empty:
        raise CxrkdError(
            f"run {run_uri} has no completed trial in its {stage!r} stage, so it has no final "
            "model yet; finish it with `cxrkd search resume RUN`"
        )
    cells = sorted(rows["cell"].unique())
    if cell not in cells:
        close = difflib.get_close_matches(cell, cells, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CxrkdError(f"run has no final model of cell {cell!r}{hint}; its cells: {cells}")
    rows = rows[rows["cell"] == cell].assign(_seed=lambda f: _seed_of(f))
    if seed is not None:
        picked = rows[rows["_seed"] == seed]
        if picked.empty:
            raise CxrkdError(
                f"cell {cell!r} has no final model of seed {seed}; its seeds: "
                f"{sorted(rows['_seed'].tolist())}"
            )
        row = picked.iloc[0]
    else:
        values = pd.to_numeric(rows[metric], errors="coerce") if metric in rows else None
        key = math.inf if values is None else (-values if mode == "max" else values)
        order = rows.assign(_key=key).fillna({"_key": math.inf}).sort_values(["_key", "_seed"])
        row = order.iloc[0]
    located = locate_test_scores(run_uri, row.to_frame().T.drop(columns="_seed"), stage=stage)
    scores = located.get((cell, row["trial_id"]))
    folder = scores.rsplit("/", 1)[0] if scores else row.get("checkpoint_uri")
    if not isinstance(folder, str) or not storage.exists(storage.join(folder, "model.pt")):
        raise CxrkdError(
            f"the final checkpoint of cell {cell!r} seed {row['_seed']} (trial "
            f"{row['trial_id']}) is not in run {run_uri}: its experiment folder "
            f"({stage}/*_{row['trial_id']}_*/checkpoint_*) was moved or deleted"
        )
    threshold = None
    if needs_threshold:
        threshold = pd.to_numeric(pd.Series([row.get(THRESHOLD_COLUMN)]), errors="coerce").iloc[0]
    if needs_threshold and not math.isfinite(threshold):
        raise CxrkdError(
            f"trial {row['trial_id']} of cell {cell!r} recorded no decision threshold "
            f"({THRESHOLD_COLUMN}): the run was made by a cxrkd that stored it for binary "
            "datasets only. Re-run the study with this cxrkd to export it"
        )
    value = pd.to_numeric(pd.Series([row.get(metric)]), errors="coerce").iloc[0]
    return FinalModel(
        cell=cell,
        seed=int(row["_seed"]),
        trial_id=str(row["trial_id"]),
        checkpoint_uri=folder,
        threshold=None if threshold is None else float(threshold),
        metric=metric,
        value=float(value),
    )


def fetch_checkpoint(uri: str) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A local folder with the checkpoint's files: the folder itself on local storage, else a
    downloaded copy (returned with its TemporaryDirectory, to clean up)."""
    if not storage.is_remote(uri):
        return Path(uri), None
    tmp = tempfile.TemporaryDirectory(prefix="cxrkd-export-")
    return storage.download_dir(uri, tmp.name), tmp
