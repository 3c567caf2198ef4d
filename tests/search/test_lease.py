"""One driver per run (search.lease): a live driver's lease refuses a second one, naming it;
a stale or dead one is taken over (and the takeover logged); of two takers exactly one
wins; a driver whose lease was taken stops; ``run.json`` is created exclusively. Each on
local storage and on a local S3 server (moto, the fixture of test_s3_storage).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_checks import fails
from test_s3_storage import S3, s3  # noqa: F401 (the local S3 server fixture)

from cxrkd.search import lease
from cxrkd.search.lease import Lease, LeaseHeld, current
from cxrkd.search.run_state import RunOptions, write_options
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError


@pytest.fixture
def fast(monkeypatch):
    """Heartbeats every 0.2 s, stale after 2 s."""
    monkeypatch.setenv(lease.HEARTBEAT_ENV, "0.2")
    monkeypatch.setenv(lease.STALE_ENV, "2")


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs" / "R")
    server: S3 = request.getfixturevalue("s3")
    return f"{server.root}/runs/R"


def _files(run_uri: str) -> list[str]:
    fs, root = storage.filesystem(storage.join(run_uri, "lease"))
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def _plant(run_uri: str, generation: int, **record) -> None:
    """A lease record as another driver would have left it."""
    now = time.time()
    full = {"host": "node-7", "pid": 4242, "pid_start": 1, "machine": "elsewhere",
            "started": now - 3600, "heartbeat": now, "token": "theirs", "released": False,
            **record}  # fmt: skip
    uri = storage.join(run_uri, "lease", f"{generation:012d}.json")
    assert storage.create_exclusive(uri, json.dumps(full))


def test_a_live_lease_refuses_a_second_driver_naming_the_holder(run_uri):
    logs: list[str] = []
    with Lease(run_uri, log=logs.append) as first:
        generation, record = current(run_uri)
        assert generation == 1 and record["token"] == first.record["token"]
        assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(LeaseHeld) as refused:
            Lease(run_uri).acquire()
        message = str(refused.value)
        for part in [f"pid {os.getpid()}", f"host {socket.gethostname()}", "since ",
                     "last heartbeat", f"kill {os.getpid()}", lease.STALE_ENV]:  # fmt: skip
            assert part in message, (part, message)
    # Released at exit: the next driver takes the run at once, and it is no takeover.
    generation, record = current(run_uri)
    assert record["released"] and generation == 2
    with Lease(run_uri, log=logs.append):
        assert current(run_uri)[0] == 3
    assert not logs


def test_heartbeats_keep_the_lease_fresh_and_few_files(run_uri, fast):
    with Lease(run_uri) as held:
        time.sleep(2.5)  # longer than the stale time: only heartbeats keep it
        generation, record = current(run_uri)
        assert generation >= 5 and record["token"] == held.record["token"]
        assert time.time() - record["heartbeat"] < 2
        with pytest.raises(LeaseHeld):
            Lease(run_uri).acquire()
        assert len(_files(run_uri)) <= 3  # older generations are pruned


def test_a_stale_lease_is_taken_over_and_the_takeover_logged(run_uri, fast):
    _plant(run_uri, 7, heartbeat=time.time() - 5)
    logs: list[str] = []
    with Lease(run_uri, log=logs.append):
        generation, record = current(run_uri)
        assert generation == 8 and record["pid"] == os.getpid()
    (line,) = logs
    assert re.search(r"took over .*R from pid 4242 on host node-7, since .*: its last "
                     r"heartbeat was \d+ s ago \(stale after 2 s\)", line), line  # fmt: skip


def test_a_fresh_lease_of_another_machine_is_respected(run_uri):
    _plant(run_uri, 1)  # heartbeat now, another machine: its process cannot be checked
    with pytest.raises(LeaseHeld, match="pid 4242 on host node-7"):
        Lease(run_uri).acquire()


def test_a_dead_driver_on_this_machine_is_taken_over_at_once(tmp_path):
    run_uri = str(tmp_path / "R")  # default periods: the record is far from stale
    me = Lease(run_uri).record
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _plant(run_uri, 1, host=me["host"], machine=me["machine"], pid=gone.pid,
           pid_start=me["pid_start"])  # fmt: skip
    # This very process, but its pid_start says another one held it (a reused pid).
    logs: list[str] = []
    with Lease(run_uri, log=logs.append):
        pass
    assert f"its process {gone.pid} on this machine is gone" in logs[0]
    _plant(run_uri, current(run_uri)[0] + 1, host=me["host"], machine=me["machine"],
           pid=os.getpid(), pid_start=-1)  # fmt: skip
    with Lease(run_uri, log=logs.append):
        pass
    assert f"its process {os.getpid()} on this machine is gone" in logs[1]


def test_of_two_takers_exactly_one_wins(run_uri, fast):
    _plant(run_uri, 1, heartbeat=time.time() - 60)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def take() -> None:
        taker = Lease(run_uri, log=lambda msg: None)
        barrier.wait()
        try:
            taker.acquire()
            outcomes.append(taker)
        except LeaseHeld as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if isinstance(o, Lease)]
    assert len(winners) == 1 and len(outcomes) == 2, outcomes
    assert current(run_uri)[1]["token"] == winners[0].record["token"]
    winners[0].release()


def test_a_driver_whose_lease_was_taken_stops(run_uri, fast):
    lost: list[str] = []
    held = Lease(run_uri, on_lost=lost.append)
    held.acquire()
    try:
        held._stop.set()  # the driver stalls: no heartbeat for longer than the stale time
        held._thread.join()
        time.sleep(2.2)
        taker = Lease(run_uri, log=lambda msg: None)
        taker.acquire()  # another driver takes over
        held._stop.clear()
        held._thread = threading.Thread(target=held._beat, daemon=True)
        held._thread.start()  # the stalled driver wakes up
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        held._stop.set()
        taker.release()
    (message,) = lost
    assert f"lost the lease of {run_uri} to pid {os.getpid()}" in message
    assert "stops now and writes nothing more" in message


def test_a_damaged_lease_record_names_the_file(tmp_path):
    run_uri = str(tmp_path / "R")
    (tmp_path / "R" / "lease").mkdir(parents=True)
    (tmp_path / "R" / "lease" / "000000000004.json").write_text('{"host": ')
    with pytest.raises(CxrkdError, match=r"lease/000000000004\.json is damaged.*delete"):
        Lease(run_uri).acquire()


@pytest.mark.parametrize(("name", "value"), [(lease.HEARTBEAT_ENV, "0"),
                                             (lease.HEARTBEAT_ENV, "soon"),
                                             (lease.STALE_ENV, "-1")])  # fmt: skip
def test_bad_periods_are_a_clear_error(name, value, monkeypatch, tmp_path):
    monkeypatch.setenv(name, value)
    with pytest.raises(CxrkdError, match=rf"{name}='{value}' is not a positive number"):
        Lease(str(tmp_path / "R"))
    monkeypatch.setenv(lease.HEARTBEAT_ENV, "30")
    monkeypatch.setenv(lease.STALE_ENV, "20")
    with pytest.raises(CxrkdError, match="must be longer than"):
        Lease(str(tmp_path / "R"))


def test_run_json_is_created_exclusively(run_uri):
    options = RunOptions(study="pneumonia-kd", name="R")
    write_options(run_uri, options, {"dataset_fingerprint": "a"})
    with pytest.raises(CxrkdError, match=r"run 'R' already exists .*search resume"):
        write_options(run_uri, options, {"dataset_fingerprint": "b"})
    assert storage.read_json(storage.join(run_uri, "run.json"))["dataset_fingerprint"] == "a"


def test_a_second_resume_of_a_live_run_is_refused(tmp_path, capsys):
    """The command line: while a driver holds the run, `search resume` exits 2 naming it,
    before Ray starts or anything of the run is read beyond run.json and state.json."""
    run = tmp_path / "runs" / "R"
    options = RunOptions(study="pneumonia-kd", dataset="tiny-pneumonia", name="R",
                         storage=str(tmp_path / "runs"))  # fmt: skip
    write_options(str(run), options, {"dataset_fingerprint": "0" * 16})
    with Lease(str(run)):
        before = sorted(p.name for p in (run / "lease").iterdir())
        fails(capsys, ["search", "resume", str(run)],
              rf"run {re.escape(str(run))} is being driven by pid {os.getpid()} on host "
              rf"{re.escape(socket.gethostname())}, since ", r"one driver per run",
              rf"kill {os.getpid()}")  # fmt: skip
        assert sorted(p.name for p in (run / "lease").iterdir()) == before
        assert not (run / "study").exists() and "resumed" not in json.loads(
            (run / "run.json").read_text()
        )
    assert Path(run / "run.json").is_file()
