"""An interrupted run continues with nothing lost or repeated: the real CLI in a subprocess,
killed mid-stage (SIGKILL in the search stage, Ctrl-C in the final stage), then resumed.
The raw records show it: no epoch was run by two attempts (drivers, worker processes), and
every row recorded before the kill and before the Ctrl-C is there unchanged at the end.
Many kills at random moments: test_torture.py.

The driver runs in its own session, so a kill reaches it and every Ray process it started
(they share its process group) and nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from cxrkd.results.frames import load_raw_records, load_trials, repeated_epochs
from cxrkd.search.cli import main

REPO = Path(__file__).resolve().parents[2]
# The KD student, the teacher it needs and the CNN baseline that runs beside that teacher
# (`--only`, kept by every resume): each stage of the study and every way a cell waits for
# another, in 10 trials rather than the whole study's 20 (which test_study_e2e runs).
ONLY = ["baseline_cnn", "resnet18_kd"]
BUDGET = {  # num_samples=2: trials per (stage, cell)
    ("teacher", "resnet50_teacher"): 2,
    **{("search", c): 2 for c in ONLY},
    **{("final", c): 2 for c in ONLY},  # the demo profile's 2 seeds
}


class Driver:
    """``python -m search.cli ARGS`` (or ``python PYTHON_ARGS ARGS``) in a new session, its
    output in a log file."""

    def __init__(
        self,
        args: list[str],
        *,
        env: dict,
        log: Path,
        python_args: tuple = ("-m", "cxrkd.search.cli"),
    ) -> None:
        self.log = log
        self.out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *python_args, *args],
            cwd=REPO,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> list[int]:
        """Pids still in the driver's session (the driver, Ray's daemons and workers)."""
        sid, pids = self.proc.pid, []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
                pids.append(int(stat.parent.name))
        return pids

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tail = self.text()[-3000:]
            raise AssertionError(f"driver still running after {timeout} s:\n{tail}") from None

    def wait_gone(self, timeout: float = 60) -> None:
        """Wait until no process of the session is left."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not self.alive(), f"processes left behind: {self.alive()}"

    def close(self) -> None:
        if self.proc.poll() is None or self.alive():
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.out.close()


def finished(run: Path, stage: str) -> int:
    """Trials of ``stage`` the driver has recorded as finished (completed or stopped)."""
    trials = load_trials(str(run))
    return int(((trials["stage"] == stage) & trials["status"].isin(["completed", "stopped"])).sum())


def _teacher_done(run: Path) -> bool:
    try:
        return "teacher" in json.loads((run / "state.json").read_text())["done"]
    except (OSError, ValueError):  # not written yet, or being replaced
        return False


def rows_of(run: Path) -> pd.Series:
    """Every epoch row recorded so far, as text (what must never change once written)."""
    raw = load_raw_records(str(run))[1]
    columns = ["stage", "trial_id", "epoch", "attempt", "val_auc", "recorded_at", "pid"]
    return raw[columns].astype(str).agg("|".join, axis=1).drop_duplicates()


def sessions_of(raw: pd.DataFrame) -> set[str]:
    """The drivers (their record sessions) that ran the epochs of ``raw``."""
    return set(raw["attempt"].str.split("/").str[0])


def wait_until(driver: Driver, ready, what: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        code = driver.proc.poll()
        assert code is None, f"driver exited ({code}) before {what}:\n{driver.text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{driver.text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture
def driver_env(home, tmp_path):
    """The CLI's environment: this test's CXRKD_HOME, no cluster address, Ray's files in a
    private short folder (socket paths are limited to 107 characters)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="cxrkd-rt-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        CXRKD_HOME=str(home),
        RAY_TMPDIR=str(ray_tmp),
        CXRKD_TRIAL_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def status_text(capsys, run: Path) -> str:
    assert main(["search", "status", str(run)]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_killed_then_interrupted_run_resumes_without_loss_or_repeats(
    tiny_store, tiny, tmp_path, driver_env, capsys
):
    storage = tmp_path / "runs"
    run = storage / "R"
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    log = tmp_path / "driver.log"
    drivers: list[Driver] = []

    def start(args: list[str]) -> Driver:
        drivers.append(Driver(args, env=driver_env, log=log))
        return drivers[-1]

    try:
        # 1. Run; SIGKILL the driver and its Ray once two search trials have finished.
        only = [a for c in ONLY for a in ("--only", c)]
        first = start(["search", "run", "pneumonia-kd", "--dataset", tiny_store.name,
                       "--name", "R", "--storage", str(storage), "--num-samples", "2",
                       "--max-concurrent", "2", *only, *sets])  # fmt: skip
        # Stages overlap (no barrier): baselines run beside the teacher, so wait for both.
        wait_until(first, lambda: finished(run, "search") >= 2 and _teacher_done(run),
                   "2 finished search trials and the registered teacher")  # fmt: skip
        first.signal(signal.SIGKILL)
        first.wait(30)
        first.wait_gone()
        before_kill = rows_of(run)
        killed = sessions_of(load_raw_records(str(run))[1])  # the first driver's
        state = json.loads((run / "state.json").read_text())
        assert state["done"] == ["teacher"]
        teacher = Path(state["teacher_uri"])
        registered = (teacher / "record.json").stat().st_mtime_ns
        text = status_text(capsys, run)
        assert "stages done: teacher" in text and "[search]" in text, text

        # 2. Resume; Ctrl-C (SIGINT to the group, as a terminal does) in the final stage, once
        # this driver has ended a final trial and run search epochs (the search goes on
        # across the kill: a final trial of a fast cell can end before the resumed driver's
        # first search trial has reported).
        second = start(["search", "resume", str(run)])
        ended = finished(run, "final")  # 0 unless the killed driver had ended final trials

        def final_and_search() -> bool:
            if finished(run, "final") <= ended:
                return False
            raw = load_raw_records(str(run))[1]
            return bool(sessions_of(raw[raw["stage"] == "search"]) - killed)

        wait_until(second, final_and_search, "a finished final trial and resumed search epochs")
        second.signal(signal.SIGINT)
        assert second.wait(120) == 130, second.text()[-3000:]
        second.wait_gone()
        before_interrupt = rows_of(run)
        interrupted = sessions_of(load_raw_records(str(run))[1]) - killed  # the second's
        assert f"continue with `cxrkd search resume {run}`" in second.text()
        state = json.loads((run / "state.json").read_text())
        assert state["done"][:1] == ["teacher"] and "final" not in state["done"], (
            "an interrupted stage was marked done"
        )

        # 3. Resume again, to the end.
        third = start(["search", "resume", str(run)])
        assert third.wait(400) == 0, third.text()[-3000:]
        third.wait_gone()
    finally:
        for driver in drivers:
            driver.close()

    text = log.read_text()
    # Both resumes found the teacher done (and kept its choice); the search may have ended
    # before the interruption or after it (its cells end one by one, beside final trials).
    assert text.count("[teacher] already done") == 2 and text.count("[search] already done") <= 1
    trials = pd.read_parquet(run / "trials.parquet")
    epochs = pd.read_parquet(run / "epochs.parquet")
    # Every trial exactly once, each cell exactly its budget, every trial finished.
    assert not trials["trial_id"].duplicated().any()
    assert trials.groupby(["stage", "cell"]).size().to_dict() == BUDGET
    assert set(trials["status"]) <= {"completed", "stopped"}, trials[["cell", "error"]]
    assert (trials.loc[trials["stage"] == "final", "status"] == "completed").all()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    for trial_id, rows in epochs.groupby("trial_id"):
        assert sorted(rows["epoch"]) == list(range(1, len(rows) + 1)), trial_id
    # The raw records (not deduplicated): no epoch was run by two attempts, and what the
    # killed and the interrupted driver had recorded is there as it was.
    raw = load_raw_records(str(run))[1]
    assert repeated_epochs(raw).empty, repeated_epochs(raw)
    assert len(raw.drop_duplicates(["trial_id", "epoch", "attempt"])) == len(epochs)
    after = rows_of(run)
    for earlier in (before_kill, before_interrupt):
        assert len(earlier) and earlier.isin(after).all(), earlier[~earlier.isin(after)]
    # The killed driver and the first resume both ran search trials (the stage was resumed
    # mid-way); the last one may have too, unless the search had ended before the
    # interruption. (It may also have run none: the search's last trials can end just
    # before the Ctrl-C, so that the last driver ends the stage without running a trial.)
    ran_search = sessions_of(raw[raw["stage"] == "search"])
    assert len(killed) == len(interrupted) == 1 and killed | interrupted <= ran_search
    if "[search] already done" in text:
        assert ran_search == killed | interrupted, ran_search
    # Trials a killed driver had started after Tune's last snapshot were re-run under new
    # ids; none of their rows is left behind.
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    # The teacher was trained and registered once, and every KD trial used it.
    assert sorted((storage / "teachers").iterdir()) == [teacher]
    assert (teacher / "record.json").stat().st_mtime_ns == registered
    kd = trials[trials["method"] == "kd_logit"]
    assert len(kd) == 4 and (kd["config/teacher_path"] == str(teacher)).all()
    assert (run / "tables" / "pneumonia_kd.md").is_file()

    text = status_text(capsys, run)
    assert "stages done: teacher, search, final" in text
    assert f"teacher resnet50_teacher: {teacher}" in text
    for (stage, cell), rows in trials.groupby(["stage", "cell"]):
        counts = rows["status"].value_counts().to_dict()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        assert any(f"[{stage}] {cell} " in ln and summary in ln for ln in text.splitlines()), (
            stage,
            cell,
            text,
        )
