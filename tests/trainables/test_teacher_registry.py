"""The teacher registry under concurrency and tampering, on local storage (S3 and the node
cache: tests/search/test_s3_storage.py): registrations upload to a folder of their own and
commit by creating ``record.json`` exclusively; readers only ever see a complete model, checked
against the sha256 of each file in the record."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from cxrkd.trainables import storage, teacher_files, teachers
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.teachers import TeacherError, TeacherKey, TeacherRegistry

FLAT = {"method": "transfer", "model": "resnet50", "img_size": 48, "seed": 0, "lr": 1e-3}


@pytest.fixture
def key() -> TeacherKey:
    return TeacherKey.from_config(FLAT, "fp0")


def model_dir(folder: Path, who: str, size: int = 64 * 1024) -> dict[str, bytes]:
    """A model folder whose files say who made it: ``config.json``, ``model.bin`` and
    ``<who>.bin`` (a file only this registration has). Returns ``{name: bytes}``."""
    files = {
        "config.json": json.dumps({"model": "resnet50", "who": who}).encode(),
        "model.bin": who.encode() * (size // len(who)),
        f"{who}.bin": os.urandom(1024),
    }
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def slow_upload(pause: float = 0.02, chunks: int = 8):
    """``storage.upload_dir`` for local storage, writing each file in pieces with pauses: a
    slow network upload, whose half-written files a reader could see."""

    def upload(local, uri) -> None:
        dest = Path(uri)
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted(Path(local).iterdir()):
            data = src.read_bytes()
            step = max(1, len(data) // chunks)
            with open(dest / src.name, "wb") as f:
                for i in range(0, len(data), step):
                    f.write(data[i : i + step])
                    f.flush()
                    time.sleep(pause)

    return upload


def run_threads(*targets) -> list:
    """Run each target in its own thread; their results, in order (an exception re-raised)."""
    results: list = [None] * len(targets)

    def call(i, target) -> None:
        try:
            results[i] = target()
        except BaseException as exc:  # re-raised below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_concurrent_registrations_of_one_key_leave_one_record_and_the_winners_files(
    tmp_path, key, monkeypatch
):
    registry = TeacherRegistry(str(tmp_path / "storage"))
    names = ["a", "b", "c", "d"]
    made = {who: model_dir(tmp_path / who, who) for who in names}
    # Every registration has uploaded before any of them commits: a real race for the record.
    barrier = threading.Barrier(len(names), timeout=30)
    upload = slow_upload(pause=0.001)

    def upload_then_wait(local, uri) -> None:
        upload(local, uri)
        barrier.wait()

    monkeypatch.setattr(storage, "upload_dir", upload_then_wait)
    uris = run_threads(
        *[lambda who=who: registry.register(key, tmp_path / who, {"who": who}) for who in names]
    )

    teacher = Path(registry.uri(key.fingerprint))
    assert uris == [str(teacher)] * len(names)  # every caller gets the same teacher
    assert [p.relative_to(teacher) for p in teacher.rglob("record.json")] == [Path("record.json")]
    record = json.loads((teacher / "record.json").read_text())
    winner = record["metrics"]["who"]
    # The record's folder holds the winner's files, exactly; the others' uploads are gone.
    assert contents(teacher_files.fetch_model_dir(str(teacher))) == made[winner]
    assert [p.name for p in (teacher / "models").iterdir()] == [record["model_dir"].split("/")[1]]
    assert not (teacher / "model").exists()
    assert registry.lookup(key) == str(teacher)


def test_a_reader_polling_during_registration_never_sees_incomplete_files(
    tmp_path, key, monkeypatch
):
    registry = TeacherRegistry(str(tmp_path / "storage"))
    size = 256 * 1024
    made = {who: model_dir(tmp_path / who, who, size=size) for who in ("first", "second")}
    monkeypatch.setattr(storage, "upload_dir", slow_upload(pause=0.01, chunks=16))
    done = threading.Event()
    seen: list[str] = []
    bad: list[str] = []

    def reader() -> None:
        while not done.is_set():
            uri = registry.lookup(key)
            if uri is None:
                continue
            try:
                record = json.loads(Path(uri, "record.json").read_text())
                files = contents(teacher_files.fetch_model_dir(uri))
            except Exception as exc:  # an unreadable record or model is a failure too
                bad.append(f"{type(exc).__name__}: {exc}")
                continue
            who = record["metrics"]["who"]
            seen.append(who)
            if files != made[who]:
                bad.append(
                    f"record of {who!r}, files {sorted((n, len(d)) for n, d in files.items())}"
                )

    def register(who: str, delay: float):
        time.sleep(delay)
        return registry.register(key, tmp_path / who, {"who": who})

    polling = threading.Thread(target=reader)
    polling.start()
    try:
        # The second starts while the first is still uploading, and finishes after it.
        uris = run_threads(lambda: register("first", 0.0), lambda: register("second", 0.1))
        time.sleep(0.2)
    finally:
        done.set()
        polling.join(30)
    assert bad == []
    assert seen, "the reader never saw the registered teacher"
    # The record committed first stays, never replaced by the other (normally the first's,
    # unless a loaded machine let the second overtake it).
    winner = json.loads(Path(uris[0], "record.json").read_text())["metrics"]["who"]
    assert set(seen) == {winner}
    assert uris[0] == uris[1] == registry.lookup(key)


def test_the_record_names_its_upload_folder_and_the_sha256_of_each_file(tmp_path, key):
    made = model_dir(tmp_path / "m", "a")
    uri = TeacherRegistry(str(tmp_path / "storage")).register(key, tmp_path / "m", {"auc": 0.9})
    record = json.loads(Path(uri, "record.json").read_text())
    assert record["format"] == 2 and record["fingerprint"] == key.fingerprint
    assert record["key"]["model"] == "resnet50" and record["metrics"] == {"auc": 0.9}
    folder = record["model_dir"]
    assert folder.startswith("models/") and len(folder) == len("models/") + 32
    assert record["files"] == {n: hashlib.sha256(d).hexdigest() for n, d in made.items()}
    files_text = json.dumps(record["files"], sort_keys=True, separators=(",", ":"))
    assert record["content_sha256"] == hashlib.sha256(files_text.encode()).hexdigest()
    assert teacher_files.fetch_model_dir(uri) == Path(uri, folder)
    assert sorted(p.name for p in Path(uri).iterdir()) == ["models", "record.json"]


def test_a_second_registration_of_a_key_reuses_the_first(tmp_path, key):
    registry = TeacherRegistry(str(tmp_path / "storage"))
    first = model_dir(tmp_path / "a", "a")
    model_dir(tmp_path / "b", "b")
    uri = registry.register(key, tmp_path / "a", {"who": "a"})
    before = Path(uri, "record.json").read_bytes()
    assert registry.register(key, tmp_path / "b", {"who": "b"}) == uri
    assert Path(uri, "record.json").read_bytes() == before
    assert contents(teacher_files.fetch_model_dir(uri)) == first
    assert len(list(Path(uri, "models").iterdir())) == 1  # the second uploaded nothing


def test_a_registration_that_fails_leaves_no_record_and_no_upload(tmp_path, key, monkeypatch):
    registry = TeacherRegistry(str(tmp_path / "storage"))
    model_dir(tmp_path / "m", "a")

    def fail(uri, text):
        raise OSError("storage went away")

    monkeypatch.setattr(storage, "create_exclusive", fail)
    with pytest.raises(OSError, match="went away"):
        registry.register(key, tmp_path / "m", {})
    assert registry.lookup(key) is None
    assert list(Path(registry.uri(key.fingerprint), "models").iterdir()) == []


@pytest.mark.parametrize("lost", ["answer says it existed", "answer never came"])
def test_a_commit_whose_answer_was_lost_keeps_its_upload(tmp_path, key, monkeypatch, lost):
    # boto3 retries a put whose answer was lost: the retry finds the record (ours) and says
    # "precondition failed"; or the call fails after the put landed. Either way the record
    # names this registration's folder, which must not be deleted.
    registry = TeacherRegistry(str(tmp_path / "storage"))
    made = model_dir(tmp_path / "m", "a")
    create = storage.create_exclusive

    def create_then_lose_the_answer(uri, text):
        assert create(uri, text)
        if lost == "answer never came":
            raise TimeoutError("read timed out")
        return False

    monkeypatch.setattr(storage, "create_exclusive", create_then_lose_the_answer)
    uri = registry.register(key, tmp_path / "m", {})
    assert contents(teacher_files.fetch_model_dir(uri)) == made


def test_a_record_whose_model_folder_is_missing_is_a_clear_error(tmp_path, key):
    registry = TeacherRegistry(str(tmp_path / "storage"))
    model_dir(tmp_path / "m", "a")
    uri = registry.register(key, tmp_path / "m", {})
    folder = Path(uri, json.loads(Path(uri, "record.json").read_text())["model_dir"])
    shutil.rmtree(folder)
    with pytest.raises(TeacherError) as err:
        teacher_files.fetch_model_dir(uri)
    assert isinstance(err.value, CxrkdError)
    message = str(err.value)
    assert f"teacher {uri} (resnet50 at 48 px, seed 0, fingerprint {key.fingerprint})" in message
    assert f"model folder {folder} is missing" in message
    assert f"delete {uri}/record.json and run the study's teacher stage again" in message


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda f: (f / "model.bin").write_bytes(b"x" * 10), "model.bin does not match its sha256"),
        (lambda f: (f / "a.bin").unlink(), "missing a.bin"),
        (lambda f: (f / "extra.pt").write_bytes(b"x"), "unexpected extra.pt"),
    ],
)
def test_registered_files_changed_after_registration_are_refused(tmp_path, key, change, problem):
    model_dir(tmp_path / "m", "a")
    uri = TeacherRegistry(str(tmp_path / "storage")).register(key, tmp_path / "m", {})
    change(teacher_files.fetch_model_dir(uri))
    with pytest.raises(TeacherError, match=rf"do not match its record \({problem}\).*Delete"):
        teacher_files.fetch_model_dir(uri)


@pytest.mark.parametrize("model_dir_value", ["../../elsewhere", "/etc", "models/../../x"])
def test_a_record_cannot_point_outside_its_teacher(tmp_path, key, model_dir_value):
    model_dir(tmp_path / "m", "a")
    uri = TeacherRegistry(str(tmp_path / "storage")).register(key, tmp_path / "m", {})
    record_path = Path(uri, "record.json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "model_dir": model_dir_value}))
    with pytest.raises(TeacherError, match="record.json is malformed"):
        teacher_files.fetch_model_dir(uri)


def test_a_teacher_registered_before_records_held_hashes_is_still_found(tmp_path, key):
    registry = TeacherRegistry(str(tmp_path / "storage"))
    uri = registry.uri(key.fingerprint)
    model_dir(Path(uri, "model"), "old")
    record = {"key": {**key.__dict__}, "fingerprint": key.fingerprint, "metrics": {}}
    storage.write_json(storage.join(uri, "record.json"), record)
    assert registry.lookup(key) == uri
    assert teachers.read_record(uri, dataset_fingerprint="fp0")["fingerprint"] == key.fingerprint
    assert teacher_files.fetch_model_dir(uri) == Path(uri, "model")


# --- storage.create_exclusive, locally -----------------------------------------------------


def test_create_exclusive_creates_once_and_keeps_the_first_text(tmp_path):
    uri = str(tmp_path / "sub" / "record.json")
    assert storage.create_exclusive(uri, "first") is True
    assert storage.create_exclusive(uri, "second") is False
    assert Path(uri).read_text() == "first"
    assert Path(uri).stat().st_mode & 0o777 == 0o644  # readable by the other users of a run
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["record.json"]  # no temps


def test_create_exclusive_has_exactly_one_winner_among_racing_threads(tmp_path):
    uri = str(tmp_path / "record.json")
    n = 8
    barrier = threading.Barrier(n, timeout=30)

    def create(i: int) -> bool:
        barrier.wait()
        return storage.create_exclusive(uri, f"writer {i}" * 1000)

    results = run_threads(*[lambda i=i: create(i) for i in range(n)])
    assert results.count(True) == 1
    assert Path(uri).read_text() == f"writer {results.index(True)}" * 1000
