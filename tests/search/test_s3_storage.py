"""Run storage on ``s3://``, against a local S3 server (moto) on the loopback interface.

What a cluster run writes to S3 goes through ``trainables.storage`` (pyarrow.fs) and Ray
Tune's own storage (also pyarrow.fs): both find the server through ``AWS_ENDPOINT_URL``,
the variable the AWS SDKs read, so the same code talks to AWS, MinIO or this test server.
Ray's workers inherit the environment of the ``ray.init`` that started them, so the
endpoint is set before the private Ray starts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrkd.trainables import storage, teacher_files, teacher_outputs, teachers
from cxrkd.trainables.storage import StorageError
from cxrkd.trainables.teachers import TeacherError, TeacherKey, TeacherRegistry

REGION = "us-east-1"


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    client: object  # boto3 S3 client on the test server

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}"

    def objects(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture
def s3(monkeypatch, tmp_path) -> Iterator[S3]:
    """A moto S3 server on 127.0.0.1 (a free port), one fresh bucket, the AWS variables
    pointing at it; the server is stopped afterwards."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1"  # never reachable from outside this machine
        endpoint = f"http://127.0.0.1:{port}"
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            # Nothing of the developer's own AWS set-up, and no instance-metadata probes.
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(key, raising=False)
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        bucket = f"cxrkd-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        yield S3(endpoint=endpoint, bucket=bucket, client=client)
        # moto keeps its buckets in process-wide state: leave none behind for later tests.
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()
    finally:
        server.stop()


def test_check_writable_accepts_a_bucket_and_leaves_no_probe(s3: S3):
    uri = storage.check_writable(f"{s3.root}/runs/")
    assert uri == f"{s3.root}/runs"
    assert not [k for k in s3.objects() if "probe" in k]


def test_check_writable_names_a_missing_bucket_and_the_fix(s3: S3):
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-cxrkd/runs.*--storage"):
        storage.check_writable("s3://no-such-bucket-cxrkd/runs")


def test_an_endpoint_in_the_uri_is_refused_with_the_variable_to_use():
    # Run folders are appended to the URI: they would end up inside its query string.
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL"):
        storage.check_writable("s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http")


def test_json_and_parquet_round_trip_without_temporary_objects(s3: S3):
    run = f"{s3.root}/runs/r1"
    storage.write_json(storage.join(run, "run.json"), {"b": [1, 2], "a": "x"})
    assert storage.read_json(storage.join(run, "run.json")) == {"a": "x", "b": [1, 2]}
    frame = pd.DataFrame({"trial_id": ["t1", "t2"], "val_auc": [0.5, 0.75], "epoch": [1, 2]})
    storage.write_parquet(storage.join(run, "records", "epochs-a--b.parquet"), frame)
    storage.write_parquet(storage.join(run, "records", "epochs-a--b.parquet"), frame.iloc[:1])
    back = storage.read_parquet(storage.join(run, "records", "epochs-a--b.parquet"))
    pd.testing.assert_frame_equal(back, frame.iloc[:1])  # the second write replaced the first
    files = [k for k in s3.objects("runs/r1/") if not k.endswith("/")]  # "/" = directory markers
    assert files == ["runs/r1/records/epochs-a--b.parquet", "runs/r1/run.json"]
    assert storage.exists(storage.join(run, "run.json"))
    assert not storage.exists(storage.join(run, "state.json"))


def _model_dir(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": "resnet50"}))
    (folder / "state.pt").write_bytes(weights)
    return folder


def test_teacher_registry_on_s3(s3: S3, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))  # this node's /tmp
    (tmp_path / "node-tmp").mkdir()
    flat = {"model": "resnet50", "img_size": 224, "seed": 0, "lr": 1e-3, "epochs": 25}
    key = TeacherKey.from_config(flat, "fp-data")
    registry = TeacherRegistry(f"{s3.root}/runs")
    assert registry.lookup(key) is None
    uri = registry.register(key, _model_dir(tmp_path / "m", b"weights-1"), {"val_auc": 0.9})
    assert uri == f"{s3.root}/runs/teachers/{key.fingerprint}"
    assert registry.lookup(key) == uri
    record = teachers.read_record(uri, dataset_fingerprint="fp-data")
    assert f"runs/teachers/{key.fingerprint}/{record['model_dir']}/state.pt" in s3.objects()
    assert record["fingerprint"] == key.fingerprint and record["metrics"] == {"val_auc": 0.9}
    with pytest.raises(TeacherError, match="fp-other"):
        teachers.read_record(uri, dataset_fingerprint="fp-other")
    with pytest.raises(TeacherError, match="no record.json"):
        teachers.read_record(registry.uri("0" * 20), dataset_fingerprint="fp-data")

    local = teacher_files.fetch_model_dir(uri)
    # In this user's cache ($CXRKD_HOME/cache/teachers), not in the node's shared /tmp.
    assert local == teacher_files.teacher_cache_dir() / record["content_sha256"]
    assert not list((tmp_path / "node-tmp").iterdir())
    assert (local / "state.pt").read_bytes() == b"weights-1"
    assert teacher_files.fetch_model_dir(uri) == local  # downloaded once per node
    # The same fingerprint on another storage with other weights is another teacher: never
    # served from the first one's local copy.
    other = TeacherRegistry(f"{s3.root}/other-runs")
    other_uri = other.register(key, _model_dir(tmp_path / "m2", b"weights-2"), {})
    assert (teacher_files.fetch_model_dir(other_uri) / "state.pt").read_bytes() == b"weights-2"


# --- the registry without races, and the node cache, on S3 --------------------------------


def _registered(s3: S3, tmp_path, weights: bytes = b"weights-1") -> tuple[TeacherKey, str, dict]:
    key = TeacherKey.from_config({"model": "resnet50", "img_size": 224, "seed": 0}, "fp-data")
    uri = TeacherRegistry(f"{s3.root}/runs").register(
        key, _model_dir(tmp_path / f"m-{uuid.uuid4().hex}", weights), {}
    )
    return key, uri, storage.read_json(f"{uri}/record.json")


def test_create_exclusive_on_s3_is_a_conditional_put(s3: S3):
    # pyarrow's S3 filesystem drops If-None-Match, so this goes through boto3; moto (>= 5.0.x)
    # answers a second conditional put of a key with 412 Precondition Failed, as AWS does.
    uri = f"{s3.root}/runs/teachers/abc/record.json"
    assert storage.create_exclusive(uri, "first") is True
    assert storage.create_exclusive(uri, "second") is False
    assert storage.read_text(uri) == "first"
    assert [k for k in s3.objects() if not k.endswith("/")] == ["runs/teachers/abc/record.json"]

    n = 6
    barrier = threading.Barrier(n, timeout=30)

    def create(i: int) -> bool:
        barrier.wait()
        return storage.create_exclusive(f"{s3.root}/runs/race.json", f"writer {i}")

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(create, range(n)))
    assert results.count(True) == 1
    assert storage.read_text(f"{s3.root}/runs/race.json") == f"writer {results.index(True)}"


def test_create_exclusive_on_s3_without_boto3_names_the_fix(s3: S3, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    monkeypatch.setattr(storage, "_S3_CLIENTS", {})
    with pytest.raises(StorageError, match="needs boto3.*pip install boto3"):
        storage.create_exclusive(f"{s3.root}/runs/x.json", "x")


def test_check_writable_refuses_a_server_that_ignores_conditional_puts(s3: S3, monkeypatch):
    monkeypatch.setattr(storage, "_create_exclusive_s3", lambda uri, data: True)
    with pytest.raises(StorageError, match=r"ignores conditional puts \(If-None-Match: \*\)"):
        storage.check_writable(f"{s3.root}/runs")


def test_concurrent_registrations_on_s3_leave_one_record_and_the_winners_files(
    s3: S3, tmp_path, monkeypatch
):
    key = TeacherKey.from_config({"model": "resnet50", "img_size": 224, "seed": 0}, "fp-data")
    registry = TeacherRegistry(f"{s3.root}/runs")
    names = ["a", "b", "c"]
    folders = {who: _model_dir(tmp_path / who, f"weights-{who}".encode()) for who in names}
    barrier = threading.Barrier(len(names), timeout=60)
    upload = storage.upload_dir

    def upload_then_wait(local, uri) -> None:  # all have uploaded before any commits
        upload(local, uri)
        barrier.wait()

    monkeypatch.setattr(storage, "upload_dir", upload_then_wait)
    with ThreadPoolExecutor(len(names)) as pool:
        uris = list(pool.map(lambda who: registry.register(key, folders[who], {"who": who}), names))
    teacher = f"runs/teachers/{key.fingerprint}"
    assert uris == [f"{s3.root}/{teacher}"] * len(names)
    files = [k for k in s3.objects(teacher) if not k.endswith("/")]
    record = storage.read_json(f"{uris[0]}/record.json")
    winner = record["metrics"]["who"]
    # One record; only the winner's upload is left, and it is what every trial gets.
    assert files == sorted(
        [f"{teacher}/record.json"]
        + [f"{teacher}/{record['model_dir']}/{n}" for n in ("config.json", "state.pt")]
    )
    local = teacher_files.fetch_model_dir(uris[0])
    assert (local / "state.pt").read_bytes() == f"weights-{winner}".encode()


def test_teacher_cache_is_private_and_named_by_the_content_hash(s3: S3, tmp_path):
    cache_root = Path(os.environ["CXRKD_HOME"]) / "cache" / "teachers"
    cache_root.mkdir(parents=True, mode=0o755)
    os.chmod(cache_root, 0o755)
    os.chmod(cache_root.parent, 0o755)
    _, uri, record = _registered(s3, tmp_path)
    local = teacher_files.fetch_model_dir(uri)
    assert local == cache_root / record["content_sha256"]
    assert cache_root.stat().st_mode & 0o777 == 0o700  # tightened: only this user
    assert cache_root.parent.stat().st_mode & 0o777 == 0o700
    assert local.stat().st_mode & 0o077 == 0
    # Content-addressed: the same files registered on another storage share the copy.
    key = TeacherKey.from_config({"model": "resnet50", "img_size": 224, "seed": 0}, "fp-data")
    again = TeacherRegistry(f"{s3.root}/other-runs").register(key, local, {})
    assert teacher_files.fetch_model_dir(again) == local
    assert sorted(p.name for p in cache_root.iterdir()) == [record["content_sha256"]]


def test_a_tampered_cache_is_detected_and_fetched_again(s3: S3, tmp_path):
    _, uri, _ = _registered(s3, tmp_path)
    local = teacher_files.fetch_model_dir(uri)
    (local / "state.pt").write_bytes(b"planted weights")
    (local / "extra.py").write_text("import os")
    again = teacher_files.fetch_model_dir(uri)
    assert (again / "state.pt").read_bytes() == b"weights-1"
    assert sorted(p.name for p in again.iterdir()) == ["config.json", "state.pt"]


def test_tampered_files_on_s3_are_refused(s3: S3, tmp_path):
    _, uri, record = _registered(s3, tmp_path)
    key = f"{uri.removeprefix(s3.root + '/')}/{record['model_dir']}/state.pt"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"other weights")
    with pytest.raises(TeacherError, match=r"state.pt does not match its sha256"):
        teacher_files.fetch_model_dir(uri)
    assert [p.name for p in teacher_files.teacher_cache_dir().iterdir()] == []  # nothing kept


def test_a_record_whose_model_folder_is_missing_on_s3_is_a_clear_error(s3: S3, tmp_path):
    _, uri, record = _registered(s3, tmp_path)
    prefix = f"{uri.removeprefix(s3.root + '/')}/{record['model_dir']}/"
    for k in s3.objects(prefix):
        s3.client.delete_object(Bucket=s3.bucket, Key=k)
    with pytest.raises(TeacherError, match=r"model folder .* is missing; delete .*record.json"):
        teacher_files.fetch_model_dir(uri)


def test_teacher_outputs_round_trip_on_s3(s3: S3):
    uri = f"{s3.root}/runs/teachers/abc"
    assert teacher_outputs.load_outputs(uri, "train-224") is None
    logits = np.arange(12, dtype=np.float32).reshape(6, 2) / 7
    feats = np.linspace(0, 1, 18, dtype=np.float16).reshape(6, 3)
    teacher_outputs.save_outputs(uri, "train-224", {"logits": logits, "feat": feats})
    back = teacher_outputs.load_outputs(uri, "train-224")
    assert sorted(back) == ["feat", "logits"] and back["feat"].dtype == np.float16
    np.testing.assert_array_equal(back["logits"], logits)
    np.testing.assert_array_equal(back["feat"], feats)
    files = [k for k in s3.objects("runs/teachers/abc/") if not k.endswith("/")]
    assert files == [storage.join("runs/teachers/abc/outputs", "train-224.npz")]


KD_CELL = "resnet18_kd"
SMALL_RESNET = "resnet10t"


@pytest.fixture
def s3_ray(s3: S3, monkeypatch, tmp_path):
    """A private 2-CPU Ray started after ``s3`` set the AWS variables, so that the trial
    processes (which inherit Ray's environment) reach the same server. The trials' temporary
    files (checkpoints before upload) go to ``<tmp_path>/node-tmp``, the teachers they
    download to this test's ``$CXRKD_HOME/cache/teachers``."""
    import ray

    (tmp_path / "node-tmp").mkdir()
    # Ray puts its session (and its sockets, whose paths must stay short) under TMPDIR
    # unless RAY_TMPDIR says otherwise.
    monkeypatch.setenv("RAY_TMPDIR", os.environ.get("RAY_TMPDIR", tempfile.gettempdir()))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node-tmp"))
    monkeypatch.setenv("CXRKD_TRIAL_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,  # the tiny dataset is ~100 KB
        log_to_driver=False,
    )
    try:
        yield s3
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_study_runs_end_to_end_on_s3_storage(s3_ray: S3, tiny_store, tiny, tmp_path):
    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.runner import run_study
    from cxrkd.search.status import status_lines

    s3 = s3_ray
    run_uri = run_study(
        RunOptions(
            study="pneumonia-kd",
            dataset=tiny_store.name,
            name="s3run",
            storage=f"{s3.root}/runs",
            num_samples=1,
            max_concurrent=2,
            # Teacher and student a small ResNet (5 M parameters, not 25 and 11): every
            # epoch's checkpoint goes through the test's S3 server at ~30 MB/s (a ResNet-50's
            # is 280 MB with its optimiser state: 9 s an epoch), and the model and optimiser
            # files (~20 and ~40 MB) still go up in several parts, as the big ones do.
            overrides={**tiny, "model": SMALL_RESNET},
            # The KD cell and the teacher it needs: every path through S3 (teacher upload,
            # download by a worker, its outputs written back, records, tables) in 4 trials;
            # the whole study's 15 run on local storage in test_study_e2e and the rehearsal.
            only=[KD_CELL],
        )
    )
    assert run_uri == f"{s3.root}/runs/s3run"
    keys = s3.objects("runs/")
    run = "runs/s3run/"
    for name in ("run.json", "state.json", "trials.parquet", "epochs.parquet"):
        assert run + name in keys
    assert {k for k in keys if k.startswith(run + "tables/") and not k.endswith("/")}
    assert any(k.startswith(f"{run}study/") for k in keys)  # Tune's experiment folder
    state = storage.read_json(f"{run_uri}/state.json")
    assert state["done"] == ["teacher", "search", "final"]
    teacher = [k for k in keys if k.startswith("runs/teachers/") and k.endswith("/record.json")]
    assert len(teacher) == 1
    teacher_uri = f"{s3.root}/{teacher[0].removesuffix('/record.json')}"
    assert list(state["teachers"].values()) == [teacher_uri]
    # A Ray worker downloaded the teacher from S3 and wrote its outputs back there.
    cache = Path(os.environ["CXRKD_HOME"]) / "cache" / "teachers"  # the workers' CXRKD_HOME
    assert list(cache.glob("*/config.json"))
    assert any(k.startswith(f"{teacher[0].removesuffix('record.json')}outputs/") for k in keys)

    trials = storage.read_parquet(f"{run_uri}/trials.parquet")
    assert set(trials["stage"]) == {"teacher", "search", "final"}
    assert (trials["status"] != "errored").all(), trials[["cell", "error"]]
    # The KD student read the teacher from S3 (errored trials would show up above).
    assert set(trials["cell"]) == {KD_CELL, "resnet50_teacher"}
    epochs = storage.read_parquet(f"{run_uri}/epochs.parquet")
    assert len(epochs) >= 2 * len(trials[trials["stage"] == "final"])
    assert any("stages done: teacher, search, final" in line for line in status_lines(run_uri))
