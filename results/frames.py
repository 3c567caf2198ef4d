"""Tidy results frames: one row per trial, one row per (trial, epoch).

The study runner records every trial and epoch under ``<run>/records/``, append-only:

- ``records/epochs/<stage>--<cell>/<name>.parquet``: epoch rows, one object per batch the
  driver commits (the rows one Tune experiment snapshot covers: ``search.records``), each
  row carrying the attempt that ran it (``attempt``: driver session, host and process);
- ``records/trials/<stage>--<cell>/<name>.parquet``: trial rows (status, config, last
  metrics), a new object whenever a trial's row changes; the newest row of a trial wins;
- ``records/{epochs,trials}-<stage>--<cell>.parquet``: one file per cell, rewritten as the
  cell progressed: the layout of runs made by earlier versions, still read.

An object is never rewritten: its name is a hash of the rows it holds, so writing the same
rows again (a resumed driver publishing what its predecessor may already have published)
finds it there. :func:`compact_records` (``cxrkd report``, and the driver at the end of each
stage) merges a cell's objects into one and deletes the merged ones; several compactions at
once lose nothing (each writes a new object before deleting only what it merged).
Reading works on both layouts while a run is still going. This module gathers them into the
two frames of the results contract and writes ``<run>/trials.parquet`` and
``<run>/epochs.parquet``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError

RECORD_KINDS = ("trials", "epochs")
# What makes two records rows the same row: an epoch is identified by the attempt that ran
# it (a double run is two rows), a trial row by when the driver recorded it.
ROW_KEYS = {"epochs": ["trial_id", "epoch", "attempt"], "trials": ["trial_id", "recorded_at"]}
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


def _latest_last(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order they were recorded: by ``recorded_at`` where the driver wrote it
    (rows of the old layout have none; they keep their file order, before newer rows)."""
    if "recorded_at" not in frame:
        return frame
    return frame.sort_values("recorded_at", kind="stable", na_position="first")


def dedupe_epochs(epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, epoch), the last one recorded. Records hold each epoch once; the
    old layout kept re-reports of a restored trial (the last report won). A second attempt
    at an epoch is not hidden from :func:`repeated_epochs`, which reads the raw rows."""
    keys = [c for c in [*_TRIAL_ID, "epoch"] if c in epochs]
    out = _latest_last(epochs).drop_duplicates(subset=keys, keep="last")
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def _dedupe_trials(trials: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in _TRIAL_ID if c in trials]
    out = _latest_last(trials).drop_duplicates(subset=keys, keep="last")
    return out.sort_index(kind="stable").reset_index(drop=True)


def repeated_epochs(epochs: pd.DataFrame) -> pd.DataFrame:
    """The (trial, epoch) pairs that more than one attempt ran, from raw rows
    (:func:`load_raw_records`), with the attempts: empty when every epoch ran once."""
    columns = [*_TRIAL_ID, "epoch", "attempts"]
    if epochs.empty or "attempt" not in epochs:
        return pd.DataFrame(columns=columns)
    keys = [c for c in [*_TRIAL_ID, "epoch"] if c in epochs]
    ran = epochs.dropna(subset=["attempt"]).groupby(keys, sort=True)["attempt"]
    attempts = ran.agg(lambda a: sorted(set(a)))
    twice = attempts[attempts.map(len) > 1]
    return twice.rename("attempts").reset_index()


# --- where the records are ----------------------------------------------------------------


@dataclass(frozen=True)
class RecordFile:
    kind: str  # "trials" | "epochs"
    stage: str
    cell: str
    uri: str
    legacy: bool  # one file per cell, rewritten as it grew (runs of earlier versions)


def records_root(run_uri: str) -> str:
    return storage.join(run_uri, "records")


def cell_folder(run_uri: str, kind: str, stage: str, cell: str) -> str:
    """Where the objects of one cell's records live."""
    return storage.join(records_root(run_uri), kind, f"{stage}--{cell}")


def record_files(run_uri: str, *, stage: str | None = None) -> list[RecordFile]:
    """Every records file of a run (of one stage), both layouts, in name order. Temporary
    files of an atomic write (``.tmp-*``, ``*.tmp``) and other names are not records."""
    run_uri = storage.normalize(run_uri)
    fs, root = storage.filesystem(records_root(run_uri))
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    found = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        parts = info.path[len(root) :].strip("/").split("/")
        if parts[-1].startswith("."):
            continue
        if len(parts) == 1:  # <kind>-<stage>--<cell>.parquet
            kind, _, rest = parts[0].removesuffix(".parquet").partition("-")
            legacy = True
        elif len(parts) == 3:  # <kind>/<stage>--<cell>/<name>.parquet
            kind, rest = parts[0], parts[1]
            legacy = False
        else:
            continue
        cell_stage, sep, cell = rest.partition("--")
        if kind not in RECORD_KINDS or not sep or (stage is not None and cell_stage != stage):
            continue
        uri = storage.join(records_root(run_uri), *parts)
        found.append(RecordFile(kind, cell_stage, cell, uri, legacy))
    return sorted(found, key=lambda f: f.uri)


def _read_table(uri: str) -> pa.Table:
    """One records file; a truncated or foreign one is an error naming it, with the fix.
    Raises FileNotFoundError when it is gone (a compaction merged it meanwhile)."""
    fs, path = storage.filesystem(uri)
    try:
        return pq.read_table(path, filesystem=fs).replace_schema_metadata(None)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid: not parquet, truncated
        if not storage.exists(uri):
            raise FileNotFoundError(uri) from None
        raise CxrkdError(
            f"{uri} is damaged ({type(exc).__name__}: {exc}); restore it from a backup or "
            "start a new run"
        ) from None


def _read_tables(uris: list[str]) -> list[pa.Table]:
    """Several files at once (one request each on S3: their latency overlaps)."""
    if len(uris) < 2:
        return [_read_table(uri) for uri in uris]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(_read_table, uris))


def read_record_file(uri: str) -> pd.DataFrame:
    return _read_table(uri).to_pandas()


def _frame(tables: list[pa.Table], empty: pd.DataFrame) -> pd.DataFrame:
    """Many small tables as one frame: concatenated by arrow (columns unioned, ints widened
    to floats where they meet), converted once; pandas per file would cost more than the
    reads."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return empty
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column of two kinds: let pandas mix them
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True, sort=False)


def _read_records(run_uri: str, stage: str | None, kinds: tuple[str, ...]) -> dict:
    """``{kind: [tables]}`` of every records file, read again from the listing when a file
    went away while being read (a compaction writes the merged object before it deletes)."""
    for attempt in range(5):
        try:
            wanted = [r for r in record_files(run_uri, stage=stage) if r.kind in kinds]
            pieces: dict[str, list[pa.Table]] = {kind: [] for kind in kinds}
            for record, table in zip(wanted, _read_tables([r.uri for r in wanted]), strict=True):
                pieces[record.kind].append(table)
            return pieces
        except FileNotFoundError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def load_raw_records(
    run_uri: str, *, stage: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, epochs)``: every row of every records file, nothing dropped (a row that a
    compaction copied may appear twice, identical)."""
    pieces = _read_records(run_uri, stage, RECORD_KINDS)
    return _frame(pieces["trials"], empty_trials()), _frame(pieces["epochs"], empty_epochs())


def load_records(run_uri: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, epochs)`` from every records file of a run (empty frames when there are
    none): one row per trial (its newest) and per (trial, epoch)."""
    trials, epochs = load_raw_records(run_uri)
    trials = _order_columns(_dedupe_trials(trials), TRIAL_COLUMNS)
    epochs = _order_columns(dedupe_epochs(epochs), EPOCH_COLUMNS)
    return trials, epochs


def load_trials(run_uri: str) -> pd.DataFrame:
    """The trials frame alone (what ``cxrkd search status`` needs: no epoch rows read)."""
    pieces = _read_records(run_uri, None, ("trials",))["trials"]
    return _order_columns(_dedupe_trials(_frame(pieces, empty_trials())), TRIAL_COLUMNS)


# --- writing and compacting ---------------------------------------------------------------


def _object_name(kind: str, keys) -> str:
    """A name that only these rows get: the hash of their keys (:data:`ROW_KEYS` tuples)."""
    plain = (json.dumps([v.item() if hasattr(v, "item") else v for v in key], default=str)
             for key in keys)  # fmt: skip
    digest = hashlib.sha256("\n".join(sorted(plain)).encode())
    return f"{digest.hexdigest()[:24]}.parquet"


def write_record_object(
    run_uri: str, kind: str, stage: str, cell: str, rows: list[dict] | pd.DataFrame
) -> str:
    """Add ``rows`` to a cell's records as one new object (atomic and durable on a local
    disk, one PUT on S3); an object already holding these rows is left as it is."""
    names = ROW_KEYS[kind]
    if isinstance(rows, pd.DataFrame):
        keys = rows.reindex(columns=names).itertuples(index=False, name=None)
        table = pa.Table.from_pandas(rows, preserve_index=False)
    else:  # the driver's rows, straight to arrow (pandas would cost it more than the write)
        keys = (tuple(row.get(n) for n in names) for row in rows)
        columns = dict.fromkeys(k for row in rows for k in row)  # every row's, in order
        table = pa.table({c: [row.get(c) for row in rows] for c in columns})
    uri = storage.join(cell_folder(run_uri, kind, stage, cell), _object_name(kind, keys))
    if not storage.exists(uri):
        _write_table(uri, table)
    return uri


def _write_table(uri: str, table: pa.Table) -> None:
    """Atomically and durably on a local disk (as ``storage.write_parquet``); one PUT on S3,
    which is atomic (nobody reads half an object)."""
    fs, path = storage.filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp"
        pq.write_table(table, tmp)
        storage.durable_replace(tmp, path)
    else:
        pq.write_table(table, path, filesystem=fs)


def _compacted(kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    if kind == "epochs":  # every attempt at an epoch stays (a double run must stay visible)
        return frame.drop_duplicates(subset=ROW_KEYS[kind], keep="last")
    return _dedupe_trials(frame)  # a trial's older rows are dead


def compact_records(run_uri: str, *, stage: str | None = None) -> int:
    """Merge each cell's record objects (of ``stage``, else all) into one new object, then
    delete the merged ones; returns how many were merged away. Files of the old layout are
    read as they are and left alone."""
    groups: dict[tuple[str, str, str], list[RecordFile]] = {}
    for record in record_files(run_uri, stage=stage):
        if not record.legacy:
            groups.setdefault((record.kind, record.stage, record.cell), []).append(record)
    merged = 0
    for (kind, cell_stage, cell), files in groups.items():
        if len(files) < 2:
            continue
        try:
            tables = _read_tables([f.uri for f in files])
        except FileNotFoundError:
            continue  # another compaction is merging this cell right now
        frame = _compacted(kind, _frame(tables, empty_epochs()))
        kept = write_record_object(run_uri, kind, cell_stage, cell, frame)
        for record in files:
            if record.uri != kept:  # only what this call read: newer objects stay
                fs, path = storage.filesystem(record.uri)
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(path)
                merged += 1
    return merged


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
