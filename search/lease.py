"""One driver per run: a lease in the run folder that a running driver keeps fresh.

The lease is a chain of small records, ``RUN/lease/<generation>.json`` (12 digits); the
highest generation is the current one: who holds the run (host, pid, since when) and when
it last showed it was alive. Every change is the *exclusive creation* of the next generation
(:func:`trainables.storage.create_exclusive`: a hard link locally and on NFS, a conditional
``If-None-Match: *`` put on S3), so of two drivers that try the same change exactly one wins
and nobody ever overwrites anybody: the holder's heartbeat, a takeover and a release are all
"create generation n+1 if nobody has".

- Taking a run: refused while the current record is live, naming the holder. A record is
  stale when its heartbeat is older than ``CXRKD_LEASE_STALE_S`` (default three heartbeat
  periods), or at once when its driver ran on this machine and its process is gone; a stale
  lease is taken over, and the takeover is logged.
- Holding it: a background thread adds a heartbeat every ``CXRKD_LEASE_HEARTBEAT_S``
  seconds (default 30). If another driver has taken the run meanwhile (this one stalled for
  longer than the stale time), this driver stops at once, writing nothing more.
- Leaving it: a last generation that says "released"; the next driver takes it at once.

Staleness compares the holder's clock with the taker's: the machines of a cluster keep
their clocks in step (NTP); a skew must stay well below the stale time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pyarrow.fs as pafs

from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError

LEASE = "lease"  # RUN/lease/<generation>.json
_NAME = re.compile(r"^(\d{12})\.json$")
HEARTBEAT_ENV, STALE_ENV = "CXRKD_LEASE_HEARTBEAT_S", "CXRKD_LEASE_STALE_S"
DEFAULT_HEARTBEAT_S = 30.0


class LeaseHeld(CxrkdError):
    """The run is driven by another live driver."""


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise CxrkdError(f"{name}={raw!r} is not a positive number of seconds; e.g. {name}=30")
    return value


def periods() -> tuple[float, float]:
    """``(heartbeat, stale)`` seconds, from the environment."""
    heartbeat = _seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S)
    stale = _seconds(STALE_ENV, 3 * heartbeat)
    if stale <= heartbeat:
        raise CxrkdError(
            f"{STALE_ENV}={stale:g} must be longer than {HEARTBEAT_ENV}={heartbeat:g} (a live "
            f"driver would be taken over between two heartbeats); e.g. {STALE_ENV}="
            f"{3 * heartbeat:g}"
        )
    return heartbeat, stale


def _machine() -> str:
    """This boot of this machine and its process namespace ('' where unknown): a pid means
    the same process only where this is the same."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if there is none: a
    reused pid is another process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) if fields[0] != "Z" else None


def _lease_uri(run_uri: str, generation: int) -> str:
    return storage.join(run_uri, LEASE, f"{generation:012d}.json")


def current(run_uri: str) -> tuple[int, dict] | None:
    """The highest generation and its record, or None when the run never had a driver."""
    fs, root = storage.filesystem(storage.join(run_uri, LEASE))
    for _ in range(5):
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        found = [int(m[1]) for i in infos if (m := _NAME.match(i.base_name))]
        if not found:
            return None
        uri = _lease_uri(run_uri, max(found))
        try:
            text = storage.read_text(uri)
        except OSError:
            if storage.exists(uri):
                raise
            continue  # pruned while we listed: list again
        try:
            record = json.loads(text)
            int(record["pid"]), float(record["heartbeat"]), float(record["started"])
            str(record["host"]), str(record["token"])
            return max(found), record
        except (ValueError, KeyError, TypeError) as exc:
            raise CxrkdError(
                f"the lease record {uri} is damaged ({type(exc).__name__}: {exc}); if no "
                f"driver is running this run, delete {storage.join(run_uri, LEASE)} and try again"
            ) from None
    raise CxrkdError(f"the lease of {run_uri} keeps changing under us; try again")


def describe(record: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"]))
    return f"pid {record['pid']} on host {record['host']}, since {started}"


class Lease:
    """This driver's hold on one run (a context manager: taken on entry, released on exit)."""

    def __init__(
        self,
        run_uri: str,
        *,
        log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.run_uri, self.log = run_uri, log
        self.on_lost = on_lost or _stop_now
        self.heartbeat_s, self.stale_s = periods()
        now = time.time()
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "machine": _machine(),
            "started": now,
            "heartbeat": now,
            "token": uuid.uuid4().hex,
            "released": False,
        }
        self.generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stale_because(self, record: dict) -> str | None:
        """Why ``record`` no longer holds its run, or None while its driver is alive."""
        if record.get("released"):
            return "released"
        age = time.time() - float(record["heartbeat"])
        if age > self.stale_s:
            return f"its last heartbeat was {age:.0f} s ago (stale after {self.stale_s:g} s)"
        mine = self.record
        if mine["machine"] and (record.get("machine"), record["host"]) == (
            mine["machine"],
            mine["host"],
        ):
            start = _process_start(int(record["pid"]))
            if start is None or start != record.get("pid_start"):
                return f"its process {record['pid']} on this machine is gone"
        return None

    def check(self) -> None:
        """Raise :class:`LeaseHeld` if a live driver holds the run; writes nothing (a
        command refused for another reason leaves the run folder as it was)."""
        found = current(self.run_uri)
        if found is not None and self.stale_because(found[1]) is None:
            raise self._held(found[1])

    def acquire(self) -> None:
        for _ in range(8):
            found = current(self.run_uri)
            reason = None
            if found is not None:
                generation, record = found
                reason = self.stale_because(record)
                if reason is None:
                    raise self._held(record)
            else:
                generation, record = 0, None
            if self._create(generation + 1, heartbeat=time.time()):
                if record is not None and reason != "released":
                    self.log(f"took over {self.run_uri} from {describe(record)}: {reason}")
                self._prune(below=generation)
                self._thread = threading.Thread(target=self._beat, name="cxrkd-lease", daemon=True)
                self._thread.start()
                return
            # Another driver created that generation first: look again (it now holds it).
        raise CxrkdError(f"could not take the lease of {self.run_uri}: it keeps changing")

    def _held(self, record: dict) -> LeaseHeld:
        age = time.time() - float(record["heartbeat"])
        return LeaseHeld(
            f"run {self.run_uri} is being driven by {describe(record)} (last heartbeat "
            f"{age:.0f} s ago); one driver per run. Wait for it to finish, or stop it (kill "
            f"{record['pid']} on {record['host']}) and run this again; a driver that died "
            f"without releasing the run is taken over once its heartbeat is {self.stale_s:g} "
            f"s old ({STALE_ENV})"
        )

    def _create(self, generation: int, **changes) -> bool:
        record = {**self.record, **changes, "generation": generation}
        text = json.dumps(record, indent=2, sort_keys=True)
        if not storage.create_exclusive(_lease_uri(self.run_uri, generation), text):
            return False
        self.record, self.generation = record, generation
        return True

    def _prune(self, *, below: int) -> None:
        """Older generations than ``below`` (the newest two stay, for readers listing now)."""
        fs, root = storage.filesystem(storage.join(self.run_uri, LEASE))
        for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
            m = _NAME.match(info.base_name)
            if m and int(m[1]) < below:
                with contextlib.suppress(FileNotFoundError, OSError):
                    fs.delete_file(info.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._create(self.generation + 1, heartbeat=time.time()):
                    found = current(self.run_uri)
                    if found and found[1]["token"] == self.record["token"]:
                        self.generation, self.record = found  # ours, its answer got lost
                        continue
                    taker = describe(found[1]) if found else "another driver"
                    self.on_lost(
                        f"lost the lease of {self.run_uri} to {taker} (no heartbeat of this "
                        f"driver reached the run folder for {self.stale_s:g} s); this driver "
                        "stops now and writes nothing more, the other one goes on with the run"
                    )
                    return
                self._prune(below=self.generation - 1)
            except Exception as exc:  # storage unreachable for a moment: try next period
                self.log(f"lease heartbeat of {self.run_uri} failed ({exc}); retrying")

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with contextlib.suppress(Exception):  # lost meanwhile: nothing of ours to release
            if self._create(self.generation + 1, heartbeat=time.time(), released=True):
                self._prune(below=self.generation - 1)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _stop_now(message: str) -> None:
    """Another driver holds the run now: stop as a killed driver would (no experiment
    snapshot, no records), which the run is made to survive (``cxrkd search resume``)."""
    print(f"cxrkd: error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


@contextlib.contextmanager
def hold(run_uri: str, **kwargs) -> Iterator[Lease]:
    with Lease(run_uri, **kwargs) as lease:
        yield lease
