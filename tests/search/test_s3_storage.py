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
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainables import storage, teachers
from trainables.storage import StorageError
from trainables.teachers import TeacherError, TeacherKey, TeacherRegistry

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
    assert f"runs/teachers/{key.fingerprint}/model/state.pt" in s3.objects()
    record = teachers.read_record(uri, dataset_fingerprint="fp-data")
    assert record["fingerprint"] == key.fingerprint and record["metrics"] == {"val_auc": 0.9}
    with pytest.raises(TeacherError, match="fp-other"):
        teachers.read_record(uri, dataset_fingerprint="fp-other")
    with pytest.raises(TeacherError, match="no record.json"):
        teachers.read_record(registry.uri("0" * 20), dataset_fingerprint="fp-data")

    local = teachers.fetch_model_dir(uri)
    assert local.is_relative_to(tmp_path / "node-tmp")
    assert (local / "state.pt").read_bytes() == b"weights-1"
    assert teachers.fetch_model_dir(uri) == local  # downloaded once per node
    # The same fingerprint on another storage is another teacher: never served from the
    # first one's local copy.
    other = TeacherRegistry(f"{s3.root}/other-runs")
    other_uri = other.register(key, _model_dir(tmp_path / "m2", b"weights-2"), {})
    assert (teachers.fetch_model_dir(other_uri) / "state.pt").read_bytes() == b"weights-2"


def test_teacher_outputs_round_trip_on_s3(s3: S3):
    uri = f"{s3.root}/runs/teachers/abc"
    assert teachers.load_outputs(uri, "train-224") is None
    logits = np.arange(12, dtype=np.float32).reshape(6, 2) / 7
    feats = np.linspace(0, 1, 18, dtype=np.float16).reshape(6, 3)
    teachers.save_outputs(uri, "train-224", {"logits": logits, "feat": feats})
    back = teachers.load_outputs(uri, "train-224")
    assert sorted(back) == ["feat", "logits"] and back["feat"].dtype == np.float16
    np.testing.assert_array_equal(back["logits"], logits)
    np.testing.assert_array_equal(back["feat"], feats)
    files = [k for k in s3.objects("runs/teachers/abc/") if not k.endswith("/")]
    assert files == [storage.join("runs/teachers/abc/outputs", "train-224.npz")]


@pytest.fixture
def s3_ray(s3: S3, monkeypatch, tmp_path):
    """A private 2-CPU Ray started after ``s3`` set the AWS variables, so that the trial
    processes (which inherit Ray's environment) reach the same server. The trials' temporary
    files (checkpoints before upload, downloaded teachers) go to ``<tmp_path>/node-tmp``."""
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
    from search.run_state import RunOptions
    from search.runner import run_study
    from search.status import status_lines

    s3 = s3_ray
    run_uri = run_study(
        RunOptions(
            study="pneumonia-kd",
            dataset=tiny_store.name,
            name="s3run",
            storage=f"{s3.root}/runs",
            num_samples=1,
            max_concurrent=2,
            overrides=tiny,
        )
    )
    assert run_uri == f"{s3.root}/runs/s3run"
    keys = s3.objects("runs/")
    run = "runs/s3run/"
    for name in ("run.json", "state.json", "trials.parquet", "epochs.parquet"):
        assert run + name in keys
    assert {k for k in keys if k.startswith(run + "tables/") and not k.endswith("/")}
    for stage in ("teacher", "search", "final"):  # Tune's experiment folders
        assert any(k.startswith(f"{run}{stage}/") for k in keys), stage
    state = storage.read_json(f"{run_uri}/state.json")
    assert state["done"] == ["teacher", "search", "final"]
    teacher = [k for k in keys if k.startswith("runs/teachers/") and k.endswith("/record.json")]
    assert len(teacher) == 1
    teacher_uri = f"{s3.root}/{teacher[0].removesuffix('/record.json')}"
    assert list(state["teachers"].values()) == [teacher_uri]
    # A Ray worker downloaded the teacher from S3 and wrote its outputs back there.
    assert list((tmp_path / "node-tmp" / "cxrkd-teachers").glob("*/config.json"))
    assert any(k.startswith(f"{teacher[0].removesuffix('record.json')}outputs/") for k in keys)

    trials = storage.read_parquet(f"{run_uri}/trials.parquet")
    assert set(trials["stage"]) == {"teacher", "search", "final"}
    assert (trials["status"] != "errored").all(), trials[["cell", "error"]]
    # The KD student read the teacher from S3 (errored trials would show up above).
    assert "resnet18_kd" in set(trials["cell"])
    epochs = storage.read_parquet(f"{run_uri}/epochs.parquet")
    assert len(epochs) >= 2 * len(trials[trials["stage"] == "final"])
    assert any("stages done: teacher, search, final" in line for line in status_lines(run_uri))
