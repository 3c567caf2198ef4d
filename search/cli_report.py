"""``cxrkd report RUN [--out DIR]``: a run's tables, ``dashboard.html`` and ``optuna.db``.

Also written at the end of every study; on demand it works on a run that is still going or
was interrupted (it reads whatever records exist), on local and ``s3://`` storage. It first
compacts the run's records (``results.frames.compact_records``).
"""

from __future__ import annotations

import argparse
import sys
import time
from types import SimpleNamespace

from cxrkd.trainables.errors import CxrkdError


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a run's tables, dashboard.html and optuna.db (also mid-run)",
        description="Collect a run's records into trials.parquet/epochs.parquet (in the run), "
        "then write its comparison tables (tables/), dashboard.html (one offline file) and "
        "optuna.db (open with `optuna-dashboard sqlite:///.../optuna.db`).",
    )
    p.add_argument("run", help="run folder, URI (s3://...), or name under the default storage")
    p.add_argument("--out", help="write tables, dashboard and optuna.db here (default: the run)")
    p.set_defaults(func=cmd_report)


def manifest_of(dataset: str, study, trials):
    """The run's dataset manifest, or a stand-in naming it when this machine lacks the store
    (a report made away from the data: the caption then cannot say whether it is synthetic).
    The stand-in's task is the study's, or multi-class when the run's trials (``trials()``,
    read only then) recorded confusion counts, its classes those of the counts."""
    from cxrkd.results.figure_data import multiclass_confusion
    from cxrkd.trainables.data.store import DatasetStore

    try:
        return DatasetStore.open(dataset).manifest
    except CxrkdError as exc:
        print(f"cxrkd: note: {exc}; the tables' caption names the dataset only", file=sys.stderr)
    classes = tuple(dict.fromkeys(actual for _, actual, _ in multiclass_confusion(trials())))
    task = "multiclass" if classes else study.task
    return SimpleNamespace(name=dataset, kind="not on this machine", synthetic=False, task=task,
                           labels=classes)  # fmt: skip


def cmd_report(args: argparse.Namespace) -> int:
    from cxrkd.results.dashboard import DASHBOARD
    from cxrkd.results.frames import (
        compact_records,
        load_raw_records,
        load_trials,
        repeated_epochs,
    )
    from cxrkd.results.optuna_export import OPTUNA_DB
    from cxrkd.results.report import write_report
    from cxrkd.search.optuna_live import live_url, shown
    from cxrkd.search.run_state import RunOptions, read_run, run_uri_of
    from cxrkd.search.study_options import study_with_options
    from cxrkd.trainables import storage

    started = time.perf_counter()
    run_uri = run_uri_of(args.run)
    options = RunOptions(**read_run(run_uri)["options"])
    study = study_with_options(options)
    out = storage.normalize(args.out) if args.out else run_uri
    tables = storage.join(out, "tables")
    # The driver adds its records as small objects; one per cell reads faster (also mid-run:
    # nothing is lost if the driver adds more meanwhile).
    compact_records(run_uri)
    twice = repeated_epochs(load_raw_records(run_uri)[1])
    if len(twice):
        print(
            f"cxrkd: warning: {len(twice)} epoch(s) were run by more than one attempt (the "
            f"newest is reported), e.g. trial {twice['trial_id'].iloc[0]} epoch "
            f"{twice['epoch'].iloc[0]}: {', '.join(twice['attempts'].iloc[0])}",
            file=sys.stderr,
        )
    manifest = manifest_of(options.dataset, study, lambda: load_trials(run_uri))
    write_report(run_uri, study, manifest, out=tables, dashboard_dir=out)
    db = storage.join(out, OPTUNA_DB)
    print(f"tables     {tables}")
    print(f"dashboard  {storage.join(out, DASHBOARD)}")
    print(f"optuna     {db}  (open: optuna-dashboard sqlite:///{db})")
    live = live_url(options.optuna_storage, run_uri)
    gone = live is not None and live.startswith("sqlite:///") and not storage.exists(live[10:])
    if live is not None and not gone:  # the driver's live mirror (search.optuna_live)
        print(f"live       {shown(live)}  (open: optuna-dashboard {shown(live)})")
    print(f"written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0
