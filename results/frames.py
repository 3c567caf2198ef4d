"""Tidy results frames: one row per trial, one row per (trial, epoch).

The study runner writes one pair of parquet files per (stage, cell) under ``<run>/records/``
(``trials-<stage>--<cell>.parquet``, ``epochs-<stage>--<cell>.parquet``) and rewrites them as
the cell progresses, so reading them works while a run is still going. This module gathers
them into the two frames of the results contract and writes ``<run>/trials.parquet`` and
``<run>/epochs.parquet``.
"""

from __future__ import annotations

import os
import tempfile

import pandas as pd
import pyarrow.fs as pafs

from trainables import storage

TRIAL_KEYS = ["study", "stage", "cell", "method", "trial_id"]
TRIAL_COLUMNS = [*TRIAL_KEYS, "status", "error"]
EPOCH_COLUMNS = [*TRIAL_KEYS, "epoch"]
# A trial id is unique within one Tune experiment; each cell is its own experiment.
_TRIAL_ID = ["study", "stage", "cell", "trial_id"]


def empty_trials() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in TRIAL_COLUMNS})


def empty_epochs() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in TRIAL_KEYS})
    frame["epoch"] = pd.Series(dtype="int64")
    return frame


def _order_columns(frame: pd.DataFrame, leading: list[str]) -> pd.DataFrame:
    """Contract columns first, then ``config/*`` sorted, then metrics in order of appearance."""
    for column in leading:
        if column not in frame:
            frame[column] = None
    config = sorted(c for c in frame.columns if c.startswith("config/"))
    rest = [c for c in frame.columns if c not in leading and c not in config]
    return frame[[*leading, *config, *rest]]


def _concat(frames: list[pd.DataFrame], empty: pd.DataFrame) -> pd.DataFrame:
    # Empty pieces are dropped: concatenating them changes dtypes (and pandas warns about it).
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty
    return pd.concat(frames, ignore_index=True, sort=False)


def dedupe_epochs(epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, epoch): a restored trial re-reports epochs; the last report wins."""
    keys = [c for c in [*_TRIAL_ID, "epoch"] if c in epochs]
    out = epochs.drop_duplicates(subset=keys, keep="last")
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def _dedupe_trials(trials: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in _TRIAL_ID if c in trials]
    return trials.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)


def load_records(run_uri: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, epochs)`` from every records file of a run (empty frames when there are none)."""
    fs, root = storage.filesystem(storage.join(storage.normalize(run_uri), "records"))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return empty_trials(), empty_epochs()
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    pieces: dict[str, list[pd.DataFrame]] = {"trials": [], "epochs": []}
    for name in names:
        kind = name.split("-", 1)[0]
        # Other names (temporary files of an atomic write, notes) are not records.
        if kind in pieces and name.endswith(".parquet"):
            pieces[kind].append(pd.read_parquet(f"{root}/{name}", filesystem=fs))
    trials = _concat(pieces["trials"], empty_trials())
    epochs = _concat(pieces["epochs"], empty_epochs())
    trials = _order_columns(_dedupe_trials(trials), TRIAL_COLUMNS)
    epochs = _order_columns(dedupe_epochs(epochs), EPOCH_COLUMNS)
    return trials, epochs


def _write_parquet(frame: pd.DataFrame, uri: str) -> None:
    fs, path = storage.filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        # Readers (a dashboard refreshing mid-run) must never see half a file.
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-", suffix=".parquet")
        os.close(fd)
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return
    frame.to_parquet(path, filesystem=fs, index=False)  # an S3 PUT is atomic


def write_frames(run_uri: str, trials: pd.DataFrame, epochs: pd.DataFrame) -> tuple[str, str]:
    """Write ``<run>/trials.parquet`` and ``<run>/epochs.parquet``; returns their URIs."""
    run_uri = storage.normalize(run_uri)
    out = storage.join(run_uri, "trials.parquet"), storage.join(run_uri, "epochs.parquet")
    _write_parquet(trials, out[0])
    _write_parquet(epochs, out[1])
    return out
