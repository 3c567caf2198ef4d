"""``cxrkd search status RUN``: stages, trials per cell by status, the best so far, errors."""

from __future__ import annotations

import pandas as pd

from search.run_state import read_records_file, read_run, read_state, run_uri_of
from trainables import storage


def load_trial_records(run_uri: str) -> pd.DataFrame:
    fs, path = storage.filesystem(storage.join(run_uri, "records"))
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    frames = [
        read_records_file(storage.join(run_uri, "records", info.base_name))
        for info in infos
        if info.base_name.startswith("trials-") and info.base_name.endswith(".parquet")
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def status_lines(run_uri: str) -> list[str]:
    raw = read_run(run_uri)
    opts = raw["options"]
    state, done = read_state(run_uri)
    lines = [
        f"run {run_uri}",
        f"  study {opts['study']} (profile {opts['profile']}) on dataset {opts['dataset']}",
        f"  stages done: {', '.join(done) or 'none'}",
    ]
    if opts.get("only"):
        lines.insert(2, f"  only the cells matching {opts['only']} and their teachers")
    for key, uri in state.teachers.items():
        lines.append(f"  teacher {key}: {uri}")
    trials = load_trial_records(run_uri)
    if trials.empty:
        lines.append("  no trial has reported yet")
        return lines
    for (stage, cell), rows in trials.groupby(["stage", "cell"], sort=False):
        counts = rows["status"].value_counts().to_dict()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        best = rows["val_auc"].max() if "val_auc" in rows else float("nan")
        lines.append(f"  [{stage}] {cell:<22} {summary:<40} best val_auc {best:.4f}")
        for err in rows.loc[rows["status"] == "errored", "error"].dropna().unique()[:3]:
            lines.append(f"      error: {err}")
    return lines


def print_status(run: str) -> None:
    print("\n".join(status_lines(run_uri_of(run))))
