"""The driver's time per epoch record as a cell grows: old layout (one file per cell,
rewritten on every epoch) vs the append-only layout (``search.records``), side by side.

Run: ``.venv/bin/python bench/records_scale.py [--points 1 10 100 1000] [--epochs 4]
[--storage DIR|s3://...]``. No Ray: the driver's records callback is called directly with fake
trials, as Tune calls it. For each point ``n`` the cell already holds the records of ``n - 1``
trials of ``--epochs`` epochs (written beforehand, not timed), then trial ``n``'s epochs are
recorded and timed:

* ``old``: what the driver did before (commit c12802c, ``search/records.py``
  ``write_records``): read the cell's ``epochs-<stage>--<cell>.parquet``, append the row,
  drop duplicates, write it all again (atomically and durably);
* ``new``: ``RecordsCallback`` as Tune drives it: the result, its checkpoint registered, then
  a snapshot uploaded (``get_state`` + ``on_snapshot_saved``) after *every* epoch, the worst
  case (Tune snapshots every 10 s or so, so one object usually holds many rows). The cell
  then holds one object per epoch before it, as a driver that never compacted would leave.

Prints ms per epoch record for both and the ratio old/new, and the report's compaction of
the new layout (all those objects into one) at each point.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from types import SimpleNamespace

import pandas as pd

from cxrkd.results.frames import compact_records, load_raw_records
from cxrkd.search.records import SKIP_RESULT_KEYS, RecordsCallback
from cxrkd.trainables import storage

STAGE, CELL = "search", "cnn"
METRICS = [f"val_m{i}" for i in range(28)]  # a real epoch row has ~35 metrics


class FakeTrial(SimpleNamespace):
    """What the callback reads of a Tune trial."""

    def __init__(self, trial_id: str, epochs: int) -> None:
        super().__init__(trial_id=trial_id, status="RUNNING", last_result={}, checkpoint=None,
                         error_file=None, latest_checkpoint_result=None,
                         config={"cell": CELL, "method": "cnn_baseline", "epochs": epochs,
                                 "lr": 0.01})  # fmt: skip

    def get_error(self) -> None:
        return None


def result(epoch: int, pid: int = 1234) -> dict:
    metrics = {m: 0.5 + epoch / 100 for m in METRICS}
    return {"epoch": epoch, **metrics, "pid": pid, "hostname": "node-a", "node_ip": "10.0.0.1",
            "should_checkpoint": True, "done": False, "training_iteration": epoch,
            "config": {}, "time_this_iter_s": 0.5}  # fmt: skip


def old_row(trial: FakeTrial, res: dict) -> dict:
    ids = {"study": "bench", "stage": STAGE, "cell": CELL, "method": "cnn_baseline",
           "trial_id": trial.trial_id}  # fmt: skip
    return {**ids, **{k: v for k, v in res.items() if k not in SKIP_RESULT_KEYS}}


def old_write(run: str, frame: pd.DataFrame) -> None:
    """``write_records`` of the old layout (c12802c): merge with the file, rewrite it."""
    uri = storage.join(run, "records", f"epochs-{STAGE}--{CELL}.parquet")
    if storage.exists(uri):
        frame = pd.concat([storage.read_parquet(uri), frame], ignore_index=True)
    frame = frame.drop_duplicates(subset=["trial_id", "epoch"], keep="last")
    storage.write_parquet(uri, frame)


def fill_old(run: str, trials: int, epochs: int) -> None:
    rows = [old_row(FakeTrial(f"p{t:05d}", epochs), result(e))
            for t in range(trials) for e in range(1, epochs + 1)]  # fmt: skip
    if rows:
        old_write(run, pd.DataFrame(rows))


def fill_new(run: str, trials: int, epochs: int) -> None:
    """The objects an uncompacted cell holds after ``trials`` trials: one per epoch."""
    records = RecordsCallback(run_uri=run, study="bench", stage=STAGE)
    records.setup()
    for t in range(trials):
        trial = FakeTrial(f"p{t:05d}", epochs)
        for e in range(1, epochs + 1):
            records_epoch(records, trial, e)


def records_epoch(records: RecordsCallback, trial: FakeTrial, epoch: int) -> None:
    """Tune's events for one epoch, and a snapshot uploaded right after it."""
    res = result(epoch)
    records.on_trial_result(0, [trial], trial, res)
    records.on_trial_save(0, [trial], trial)
    records.get_state()
    records.on_snapshot_saved()


def time_old(run: str, trial: FakeTrial, epochs: int) -> list[float]:
    times = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        old_write(run, pd.DataFrame([old_row(trial, result(e))]))
        times.append(time.perf_counter() - t0)
    return times


def time_new(run: str, trial: FakeTrial, epochs: int) -> list[float]:
    records = RecordsCallback(run_uri=run, study="bench", stage=STAGE)
    records.setup()
    times = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        records_epoch(records, trial, e)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--storage", help="a folder or s3://bucket/prefix (default: a temp dir)")
    args = parser.parse_args()
    root = args.storage or tempfile.mkdtemp(prefix="cxrkd-records-bench-")
    print(f"storage {root}; load average {os.getloadavg()[0]:.2f}; {args.epochs} epochs a trial")
    print(f"{'trial':>6} {'rows':>6} {'old ms/rec':>11} {'new ms/rec':>11} {'old/new':>8} "
          f"{'compact s':>10}")  # fmt: skip
    base: dict[str, float] = {}
    for n in args.points:
        tag = uuid.uuid4().hex[:8]
        old_run, new_run = storage.join(root, f"old-{tag}"), storage.join(root, f"new-{tag}")
        fill_old(old_run, n - 1, args.epochs)
        fill_new(new_run, n - 1, args.epochs)
        trial = FakeTrial(f"t{n:05d}", args.epochs)
        old = statistics.median(time_old(old_run, trial, args.epochs)) * 1e3
        new = statistics.median(time_new(new_run, trial, args.epochs)) * 1e3
        t0 = time.perf_counter()
        compact_records(new_run)
        compact_s = time.perf_counter() - t0
        rows = len(load_raw_records(new_run)[1])
        assert rows == n * args.epochs, (rows, n)
        base.setdefault("old", old)
        base.setdefault("new", new)
        print(f"{n:>6} {rows:>6} {old:>11.1f} {new:>11.1f} {old / new:>8.1f} {compact_s:>10.2f}")
    print(f"trial {args.points[-1]} vs trial {args.points[0]}: old x{old / base['old']:.1f}, "
          f"new x{new / base['new']:.2f}; load average {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
