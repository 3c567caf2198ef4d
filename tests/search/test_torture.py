"""The driver SIGKILLed again and again at random moments, then resumed to the end: every
trial finishes, every epoch is recorded exactly once (one attempt ran it), and nothing a
killed driver recorded changes afterwards.

The study is :data:`probes.KILL_PROBE` (4 trials of the baseline CNN, 30 epochs of ~0.2 s
each, 2 at a time, no early stopping: the expected records are known exactly). The driver is
the real CLI in a subprocess in its own session, with its own private Ray, as in
``test_resume.py``; a kill takes the driver and every Ray process it started. Each kill comes
at a seeded random moment of one of three phases of the driver's life:

- ``start``: from its launch (imports, the lease and run.json, Ray starting, Tune's restore);
- ``trials``: after its trials have written a first checkpoint (an epoch is being reported,
  saved, snapshotted);
- ``records``: just after it published records (between Tune's snapshot upload and the next
  one: the rows a snapshot covers, published or not).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from probes import KILL_PROBE
from test_resume import REPO, Driver, driver_env  # noqa: F401  (driver_env: a fixture)

from cxrkd.results.frames import load_raw_records, repeated_epochs

SEED = 20261130
KILLS = 10
# Enough epochs that no driver finishes the study before its kill, even on a fast machine
# (a "trials" kill lets a driver train for up to 2 s: ~20 epochs at 2 trials side by side).
TRIALS, EPOCHS = 4, 30
ROW = ["trial_id", "epoch", "attempt", "val_auc", "recorded_at"]  # what must never change


def kill_plan(rng: random.Random) -> list[str]:
    """The phase of each kill, in a seeded order: a records kill first (the first driver
    restores nothing, so what it publishes is its own), then a trials kill and start kills.
    Most are start kills: a driver needs ~20 s to reach its trials on a 2-core machine (Python,
    Ray, Tune, a worker process; 30-40 s beside another test), a start kill costs ~4 s. Every
    resumed driver restores what the kills before it left, whatever their phase."""
    rest = ["trials"] + ["start"] * (KILLS - 2)
    rng.shuffle(rest)
    return ["records", *rest]


def newest_since(folder: Path, pattern: str, since: float) -> bool:
    """Whether something matching ``pattern`` under ``folder`` changed after ``since``."""
    for path in folder.glob(pattern):
        try:
            if path.stat().st_mtime >= since:
                return True
        except OSError:  # replaced or merged away meanwhile
            continue
    return False


def kill_moment(rng: random.Random, phase: str, driver: Driver, run: Path, started: float):
    """Wait until the seeded moment of ``phase`` in this driver's life; False when the driver
    ended first."""
    ready = {
        "start": lambda: True,
        "trials": lambda: newest_since(run / "study", "*/checkpoint_*", started),
        "records": lambda: newest_since(run / "records", "*/*/*.parquet", started),
    }[phase]
    delay = {"start": rng.uniform(0.5, 8.0), "trials": rng.uniform(0, 2.0),
             "records": rng.uniform(0, 0.5)}[phase]  # fmt: skip
    deadline = time.monotonic() + 300
    while not ready():
        if driver.proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"no {phase} after 300 s:\n{driver.text()[-3000:]}"
        time.sleep(0.05)
    time.sleep(delay)
    return driver.proc.poll() is None


def raw_rows(run: Path) -> pd.DataFrame:
    return load_raw_records(str(run))[1].reindex(columns=ROW)


@pytest.mark.slow
def test_a_driver_killed_ten_times_records_every_epoch_exactly_once(
    tiny_store,
    tmp_path,
    driver_env,  # noqa: F811
):
    rng = random.Random(SEED)
    phases = kill_plan(rng)
    env = {
        **driver_env,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "search"), str(REPO)]),
        "KILL_PROBE_TRIALS": str(TRIALS),
        "KILL_PROBE_EPOCHS": str(EPOCHS),
    }
    storage, log = tmp_path / "runs", tmp_path / "driver.log"
    run = storage / "T"
    cli = ["-c", "import sys, probes; sys.exit(probes.cli())"]
    first = ["search", "run", KILL_PROBE, "--dataset", tiny_store.name, "--name", "T",
             "--storage", str(storage), "--max-concurrent", "2"]  # fmt: skip
    seen = pd.DataFrame(columns=ROW)
    drivers: list[Driver] = []
    try:
        for i, phase in enumerate(phases):
            args = first if i == 0 else ["search", "resume", str(run)]
            drivers.append(Driver(args, env=env, log=log, python_args=cli))
            driver, started = drivers[-1], time.time()
            assert kill_moment(rng, phase, driver, run, started), (
                f"kill {i + 1} ({phase}): the driver ended first (the study is too short)\n"
                f"{driver.text()[-3000:]}"
            )
            driver.signal(signal.SIGKILL)
            print(f"kill {i + 1}: {phase}, {time.time() - started:.1f} s after launch")
            driver.wait(30)
            driver.wait_gone()  # the driver and every Ray process it started
            seen = pd.concat([seen, raw_rows(run)]).drop_duplicates(ignore_index=True)
        last = Driver(["search", "resume", str(run)], env=env, log=log, python_args=cli)
        drivers.append(last)
        assert last.wait(400) == 0, last.text()[-3000:]
        last.wait_gone()
    finally:
        for driver in drivers:
            driver.close()

    trials = pd.read_parquet(run / "trials.parquet")
    assert len(trials) == TRIALS and not trials["trial_id"].duplicated().any()
    assert (trials["status"] == "completed").all(), trials[["trial_id", "status", "error"]]
    raw = load_raw_records(str(run))[1]
    # No epoch was run by two attempts; every epoch of every trial is there once.
    assert repeated_epochs(raw).empty, repeated_epochs(raw)
    once = raw.drop_duplicates(["trial_id", "epoch", "attempt"])
    assert once.groupby("trial_id")["epoch"].apply(sorted).to_dict() == {
        t: list(range(1, EPOCHS + 1)) for t in trials["trial_id"]
    }
    # What killed drivers published is still there, unchanged.
    final = raw.reindex(columns=ROW)
    kept = seen.merge(final.drop_duplicates(), on=ROW, how="left", indicator=True)
    assert (kept["_merge"] == "both").all(), kept[kept["_merge"] != "both"]
    # The stage really was resumed mid-way: its epochs were run by several drivers.
    sessions = {a.split("/")[0] for a in once["attempt"]}
    assert len(sessions) >= 2, sessions
    assert len(seen) > 0
