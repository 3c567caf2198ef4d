"""The final models' per-image test scores: find them, read them, turn them into ROC curves.

The final-stage trial writes ``test_scores.npz`` into the checkpoint of its last epoch
(``trainables.checkpoint.TEST_SCORES_FILE``); Tune keeps that checkpoint in the run's
experiment folder. The driver records its URI in the trials frame (``checkpoint_uri``); runs
recorded before that column existed are searched in ``<run>/<stage>/*_<trial_id>_*/``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from cxrkd.results.figure_data import final_rows
from cxrkd.trainables import storage

# Equal to trainables.checkpoint.TEST_SCORES_FILE (a test checks); not imported from there,
# as that would import torch into every report.
TEST_SCORES_FILE = "test_scores.npz"


def _from_recorded(row: pd.Series) -> str | None:
    uri = row.get("checkpoint_uri")
    if not isinstance(uri, str) or not uri:
        return None
    candidate = storage.join(uri, TEST_SCORES_FILE)
    return candidate if storage.exists(candidate) else None


def _experiment_dirs(run_uri: str, stage: str) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    fs, root = storage.filesystem(storage.join(run_uri, stage))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return fs, [i for i in infos if i.type == pafs.FileType.Directory]


def _from_experiment(
    run_uri: str, fs: pafs.FileSystem, trial_dirs: list[pafs.FileInfo], trial_id: str
) -> str | None:
    # Tune names a trial's folder <trainable>_<trial id>_<index>_<params>_<date>.
    mine = [i for i in trial_dirs if f"_{trial_id}_" in i.base_name]
    if len(mine) != 1:
        return None
    infos = fs.get_file_info(pafs.FileSelector(mine[0].path, allow_not_found=True))
    checkpoints = sorted(i.base_name for i in infos if i.base_name.startswith("checkpoint_"))
    for name in reversed(checkpoints):  # the newest first
        path = f"{mine[0].path}/{name}/{TEST_SCORES_FILE}"
        if fs.get_file_info(path).type == pafs.FileType.File:
            if storage.is_remote(run_uri):  # pyarrow paths of remote stores have no scheme
                return f"{run_uri.split('://', 1)[0]}://{path}"
            return path
    return None


def locate_test_scores(
    run_uri: str, trials: pd.DataFrame, *, stage: str = "final"
) -> dict[tuple[str, str], str]:
    """``{(cell, trial_id): uri of test_scores.npz}`` for the completed final-stage trials
    that have one (runs made before the scores were saved have none)."""
    run_uri = storage.normalize(run_uri)
    found: dict[tuple[str, str], str] = {}
    listing = None
    for _, row in final_rows(trials, stage=stage).iterrows():
        uri = _from_recorded(row)
        if uri is None:
            if listing is None:  # listed once, only when a record does not say
                listing = _experiment_dirs(run_uri, stage)
            uri = _from_experiment(run_uri, *listing, str(row["trial_id"]))
        if uri is not None:
            found[(row["cell"], row["trial_id"])] = uri
    return found


def read_test_scores(uri: str) -> dict[str, np.ndarray]:
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        data = io.BytesIO(f.read())
    with np.load(data, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def load_test_scores(
    run_uri: str, trials: pd.DataFrame, *, stage: str = "final"
) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """The test scores of every completed final-stage trial that saved them."""
    located = locate_test_scores(run_uri, trials, stage=stage)
    return {key: read_test_scores(uri) for key, uri in located.items()}


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` from (0, 0) to (1, 1), one step per distinct score (ties move together,
    so the trapezoid area equals the Mann-Whitney AUC). Needs both classes."""
    y = np.asarray(labels).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=float).reshape(-1)
    if y.shape != s.shape or y.all() or not y.any():
        raise ValueError(
            f"roc_curve needs equal-length labels and scores with both classes, got "
            f"{y.shape} labels ({int(y.sum())} positive) and {s.shape} scores"
        )
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(y)[ends], np.cumsum(~y)[ends]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def roc_curves(scores: Mapping[tuple[str, str], Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """ROC curves of the final models from their test scores (``{(cell, trial_id): arrays}``
    as :func:`load_test_scores` loads them): one row per point, with each curve's ``auc``."""
    columns = ["cell", "trial_id", "fpr", "tpr", "auc"]
    pieces = []
    for (cell, trial_id), arrays in scores.items():
        if "global_logit" not in arrays:
            continue  # a multi-class model: no one ROC curve (its classes' are one-vs-rest)
        labels, logits = arrays["global_label"], arrays["global_logit"]
        if np.unique(labels).size < 2:
            continue  # a test split with one class has no ROC curve
        fpr, tpr = roc_curve(labels, logits)
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        pieces.append(pd.DataFrame({"cell": cell, "trial_id": trial_id, "fpr": fpr, "tpr": tpr}))
        pieces[-1]["auc"] = auc
    if not pieces:
        return pd.DataFrame(columns=columns)
    return pd.concat(pieces, ignore_index=True)[columns]
