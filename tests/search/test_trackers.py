"""``--log-to tensorboard|mlflow|wandb`` (search.trackers): bad names and missing packages
refused before anything is written, where MLflow logs, an unreachable tracker is one warning;
the fixtures and readers of the real run logged to all three (a real MLflow server on loopback,
TensorBoard's event files, W&B's offline run file), which is in test_watch_live.py."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from cxrkd.search import trackers
from cxrkd.search.cli import main
from cxrkd.search.run_state import RunOptions, read_run, write_options
from cxrkd.trainables.errors import CxrkdError


def test_unknown_tracker_is_refused_with_the_valid_names(tmp_path, capsys):
    with pytest.raises(CxrkdError, match=r"'neptune': no such tracker; valid: tensorboard, mlfl"):
        trackers.check_trackers(["tensorboard", "neptune"])
    runs = tmp_path / "runs"
    argv = ["search", "run", "pneumonia-kd", "--storage", str(runs), "--log-to", "neptune"]
    assert main(argv) == 2
    assert "valid: tensorboard, mlflow, wandb" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())  # nothing written


def test_a_missing_package_names_its_extra(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name)
    )
    with pytest.raises(CxrkdError, match=r'pip install "cxrkd\[wandb\]"'):
        trackers.check_trackers(["wandb"])
    assert trackers.check_trackers(["mlflow", "tensorboard", "mlflow"]) == ["mlflow", "tensorboard"]


def test_mlflow_uri_needs_mlflow_and_wandb_online_needs_a_key(monkeypatch, tmp_path):
    with pytest.raises(CxrkdError, match="--mlflow-uri applies to MLflow"):
        trackers.check_trackers(["tensorboard"], mlflow_uri="http://127.0.0.1:5000")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    with pytest.raises(CxrkdError, match="WANDB_MODE=offline"):
        trackers.check_trackers(["wandb"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert trackers.check_trackers(["wandb"]) == ["wandb"]


def test_where_mlflow_logs(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = str(tmp_path / "R")
    assert trackers.mlflow_uri(None, run) == f"sqlite:///{run}/mlflow.db"
    assert trackers.mlflow_uri(None, "s3://bucket/runs/R") is None  # no SQLite on S3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert trackers.mlflow_uri(None, "s3://bucket/runs/R") == "http://env:5000"
    assert trackers.mlflow_uri("http://given:5000", run) == "http://given:5000"
    assert trackers.shown("http://me:secret@host:5000") == "http://me:***@host:5000"


def test_a_run_json_without_log_to_still_loads(tmp_path):
    run = tmp_path / "R"
    run.mkdir()
    write_options(str(run), RunOptions(study="pneumonia-kd"), {"dataset_fingerprint": "x"})
    raw = json.loads((run / "run.json").read_text())
    del raw["options"]["log_to"]  # written by a cxrkd before --log-to
    (run / "run.json").write_text(json.dumps(raw))
    assert RunOptions(**read_run(str(run))["options"]).log_to is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


class _Trial:
    """What the trackers read of a Tune trial (hashable by identity, as Tune's is)."""

    def __init__(self, n: int, staging: Path) -> None:
        self.trial_id = f"t{n}"
        self.config = {"stage": "search", "cell": "cnn", "method": "cnn_baseline", "lr": 0.01 * n}
        self.evaluated_params = self.config
        self.storage = SimpleNamespace(experiment_driver_staging_path=str(staging))


def test_an_unreachable_or_failing_tracker_is_one_warning_and_the_rest_goes_on(
    tmp_path, capsys, monkeypatch
):
    """MLflow at a closed port fails at setup; TensorBoard fails at its first trial (its folder
    cannot be made): one warning line each, not one per trial, and quickly."""
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the experiment folder should be")
    uri = f"http://127.0.0.1:{_closed_port()}"
    callback = trackers.Trackers()
    start = time.monotonic()
    with trackers.tracking(["tensorboard", "mlflow"], run_uri=str(tmp_path / "R"), study="s",
                           mlflow_uri_given=uri, log=lambda m: None):  # fmt: skip
        callback.setup()
        assert list(callback.active) == ["tensorboard"]
        for n in range(3):
            trial = _Trial(n, blocker)
            callback.on_trial_start(iteration=n, trials=[trial], trial=trial)
            result = {"epoch": 1, "training_iteration": 1, "val_auc": 0.5}
            callback.on_trial_result(iteration=n, trials=[trial], trial=trial, result=result)
            callback.on_trial_complete(iteration=n, trials=[trial], trial=trial)
        callback.on_experiment_end(trials=[])
    assert time.monotonic() - start < 30  # no minutes of MLflow retries
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 2, warnings
    assert f"--log-to mlflow ({uri}) failed" in warnings[0]
    assert "--log-to tensorboard failed" in warnings[1] and "search goes on" in warnings[1]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # restored after the run


def test_the_callback_keeps_no_tracker_or_url_in_tunes_pickle(tmp_path):
    """Tune pickles the callbacks in tuner.pkl: what a resumed driver logs to comes from its
    own command line (_Active), never from there."""
    import pickle

    uri = "http://someone:secret@mlflow.example:5000"
    with trackers.tracking(["tensorboard", "mlflow"], run_uri=str(tmp_path / "R"), study="s",
                           mlflow_uri_given=uri, log=lambda m: None):  # fmt: skip
        callback = trackers.Trackers()
        callback.active = {"tensorboard": object()}
        data = pickle.dumps(callback)
    assert b"mlflow" not in data and b"tensorboard" not in data
    assert pickle.loads(data).active == {}


def test_an_epoch_is_tracked_with_its_metrics_at_its_epoch():
    result = {"epoch": 3, "training_iteration": 5, "val_auc": 0.7, "test_auc": 0.6,
              "train_loss": 1, "config": {"lr": 0.1}, "trial_id": "t", "pid": 12,
              "done": False, "time_total_s": 9.0, "hostname": "h", "cell": "cnn"}  # fmt: skip
    assert trackers.tracked(result) == {"epoch": 3, "val_auc": 0.7, "test_auc": 0.6,
                                        "train_loss": 1, "training_iteration": 3}  # fmt: skip


def test_the_default_mlflow_store_and_a_resumed_trial_keeping_its_run(tmp_path, monkeypatch):
    """A local run folder's own SQLite store, through the callback as the driver uses it; a
    second driver (a resume) finds the trial's run by its tag and continues it."""
    import mlflow

    from cxrkd.search.tracker_callbacks import mlflow_callback

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = str(tmp_path / "R")
    uri = trackers.mlflow_uri(None, run)
    trial = _Trial(1, tmp_path)
    for epoch in (1, 2):  # each epoch by another driver
        callback = mlflow_callback(uri, experiment="R", run_uri=run)
        callback.setup()
        callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
        result = {"epoch": epoch, "training_iteration": epoch, "val_auc": epoch / 10}
        callback.on_trial_result(iteration=0, trials=[trial], trial=trial, result=result)
        callback.on_trial_complete(iteration=0, trials=[trial], trial=trial)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("R")
    assert experiment.artifact_location == f"{run}/mlflow-artifacts"
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "search/cnn/t1" and found.info.status == "FINISHED"
    assert found.data.params["lr"] == "0.01" and found.data.tags["cell"] == "cnn"
    history = client.get_metric_history(found.info.run_id, "val_auc")
    assert {m.step: m.value for m in history} == {1: 0.1, 2: 0.2}
    assert (tmp_path / "R" / "mlflow.db").is_file()


# --- one real run, read back ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with a SQLite backend, started before the other fixtures
    (it takes seconds to come up); stopped by its process group at the end."""
    port = _free_port()
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    log = open(folder / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        yield SimpleNamespace(url=url, proc=proc, log=folder / "server.log")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _wait_up(server, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server not up:\n{server.log.read_text()[-3000:]}")


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B offline in this test's folder (set before Ray starts: its workers inherit it)."""
    folder = tmp_path / "wandb"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # Were W&B to try its server anyway, it would reach a closed port here, not the internet.
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    return folder


def _tfrecords(path: Path):
    """The events of a TensorBoard event file (TFRecord framing: length, its CRC, data, CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data, pos = path.read_bytes(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        yield Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4


def _tensorboard(folder: Path) -> tuple[dict, dict]:
    """``({(tag, step): value}, hparams)`` of one trial's event folder."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    scalars, hparams = {}, {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in _tfrecords(path):
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    info = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    for key, v in info.session_start_info.hparams.items():
                        hparams[key] = v.string_value or v.number_value
                elif value.HasField("simple_value"):
                    scalars[(value.tag, event.step)] = value.simple_value
    return scalars, hparams


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file (LevelDB log framing: 32 KiB blocks, 7-byte headers),
    parsed with wandb's own protobuf."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, parts, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            out.append(Record.FromString(chunk))
        elif kind in (2, 3):  # first, middle
            parts = chunk if kind == 2 else parts + chunk
        elif kind == 4:  # last
            out.append(Record.FromString(parts + chunk))
    return out


def _item_value(item):
    if item.value_json:
        return json.loads(item.value_json)
    kind = item.WhichOneof("value") if item.DESCRIPTOR.oneofs else None
    return getattr(item, kind) if kind else None


def _wandb_run(path: Path) -> tuple[object, dict, dict]:
    """``(run record, config, {(key, step): value})`` of one offline W&B run file."""
    run, config, history = None, {}, {}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({i.key: _item_value(i) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: _item_value(i) for i in record.config.update})
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): _item_value(i) for i in record.history.item}
            step = row.get("_step")
            history.update({(k, step): v for k, v in row.items()})
    return run, config, history


METRICS = ("val_auc", "train_loss", "val_loss")  # compared at every epoch
TEST_METRICS = ("test_auc", "test_auprc")  # the final stage's last epoch
