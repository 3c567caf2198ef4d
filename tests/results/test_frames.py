"""Records files of a run -> the tidy trials/epochs frames, locally and on S3 (moto)."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrkd.results.frames import (
    EPOCH_COLUMNS,
    TRIAL_COLUMNS,
    dedupe_epochs,
    load_records,
    write_frames,
)


def _trial(cell: str, trial_id: str, **extra) -> dict:
    return {
        "study": "pneumonia-kd",
        "stage": "final",
        "cell": cell,
        "method": "kd_logit" if "kd" in cell else "transfer",
        "trial_id": trial_id,
        "status": "completed",
        "error": None,
        **extra,
    }


def _epoch(cell: str, trial_id: str, epoch: int, val_auc: float) -> dict:
    return {**_trial(cell, trial_id), "epoch": epoch, "val_auc": val_auc}


def _write_records(records, stage: str, cell: str, trials: list[dict], epochs: list[dict]):
    pd.DataFrame(trials).to_parquet(f"{records}/trials-{stage}--{cell}.parquet", index=False)
    pd.DataFrame(epochs).to_parquet(f"{records}/epochs-{stage}--{cell}.parquet", index=False)


@pytest.fixture
def run_dir(tmp_path):
    records = tmp_path / "run" / "records"
    records.mkdir(parents=True)
    _write_records(
        records,
        "final",
        "resnet18_kd",
        [
            _trial(
                "resnet18_kd",
                "t1",
                **{"config/alpha": 0.6, "config/lr": 1e-3, "test_auc": 0.9},
                params=11_000_000,
                latency_ms=1.5,
            )
        ],
        # t1 was restored after epoch 2 and reported epoch 2 again: the second report wins.
        [
            _epoch("resnet18_kd", "t1", 1, 0.70),
            _epoch("resnet18_kd", "t1", 2, 0.75),
            _epoch("resnet18_kd", "t1", 2, 0.80),
            _epoch("resnet18_kd", "t1", 3, 0.85),
        ],
    )
    _write_records(
        records,
        "final",
        "baseline_cnn",
        [_trial("baseline_cnn", "t1", **{"config/lr": 2e-3, "test_auc": 0.7})],
        [_epoch("baseline_cnn", "t1", 1, 0.60)],
    )
    # Neither a temporary file of an atomic write nor a stray note is a record.
    (records / ".tmp-abc.parquet").write_bytes(b"half a file")
    (records / "notes.txt").write_text("hello")
    return tmp_path / "run"


def test_load_records_concatenates_cells_and_unions_config_columns(run_dir):
    trials, epochs = load_records(str(run_dir))
    assert list(trials.columns[: len(TRIAL_COLUMNS)]) == TRIAL_COLUMNS
    assert sorted(trials["cell"]) == ["baseline_cnn", "resnet18_kd"]
    by_cell = trials.set_index("cell")
    # Same trial id in two cells (two Tune experiments) stays two trials.
    assert by_cell.loc["resnet18_kd", "config/alpha"] == 0.6
    assert pd.isna(by_cell.loc["baseline_cnn", "config/alpha"])
    assert by_cell.loc["baseline_cnn", "test_auc"] == 0.7
    assert list(epochs.columns[: len(EPOCH_COLUMNS)]) == EPOCH_COLUMNS
    assert len(epochs) == 4  # 5 reports, one duplicated (trial, epoch)


def test_load_records_keeps_the_last_report_of_a_repeated_epoch(run_dir):
    _, epochs = load_records(str(run_dir))
    kd = epochs[epochs["cell"] == "resnet18_kd"]
    assert kd["epoch"].tolist() == [1, 2, 3]
    assert kd["val_auc"].tolist() == [0.70, 0.80, 0.85]


def test_dedupe_epochs_keeps_last_and_sorts():
    rows = [
        _epoch("c", "t2", 1, 0.1),
        _epoch("c", "t1", 2, 0.2),
        _epoch("c", "t1", 1, 0.3),
        _epoch("c", "t1", 2, 0.4),
    ]
    out = dedupe_epochs(pd.DataFrame(rows))
    assert out[["trial_id", "epoch", "val_auc"]].values.tolist() == [
        ["t1", 1, 0.3],
        ["t1", 2, 0.4],
        ["t2", 1, 0.1],
    ]


@pytest.mark.parametrize("make_folder", [True, False])
def test_load_records_of_a_run_without_records_gives_empty_contract_frames(tmp_path, make_folder):
    if make_folder:
        (tmp_path / "records").mkdir()
    trials, epochs = load_records(str(tmp_path))
    assert trials.empty and epochs.empty
    assert list(trials.columns) == TRIAL_COLUMNS
    assert list(epochs.columns) == EPOCH_COLUMNS


def test_write_frames_round_trips(run_dir):
    trials, epochs = load_records(str(run_dir))
    uris = write_frames(str(run_dir), trials, epochs)
    assert uris == (str(run_dir / "trials.parquet"), str(run_dir / "epochs.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(uris[0]), trials)
    pd.testing.assert_frame_equal(pd.read_parquet(uris[1]), epochs)
    assert not list(run_dir.glob(".tmp-*"))  # the atomic write left nothing behind


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto S3 server; pyarrow and boto3 both honour AWS_ENDPOINT_URL."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="cxrkd-test")
    yield "s3://cxrkd-test"
    server.stop()


def test_s3_run_records_to_frames_and_tables(s3_bucket, run_dir):
    from cxrkd.results.tables import comparison_table, format_table, write_tables
    from cxrkd.trainables import storage

    run = storage.join(s3_bucket, "run")
    storage.upload_dir(run_dir / "records", storage.join(run, "records"))
    trials, epochs = load_records(run)
    assert len(trials) == 2 and len(epochs) == 4
    write_frames(run, trials, epochs)
    fs, path = storage.filesystem(storage.join(run, "trials.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(path, filesystem=fs), trials)

    numeric = comparison_table(trials, rows=[("resnet18_kd", "KD")], metrics=[("test_auc", "AUC")])
    written = write_tables(
        format_table(numeric),
        storage.join(run, "tables"),
        "pneumonia",
        numeric=numeric,
        title="T",
        caption="SYNTHETIC",
    )
    assert written["md"] == f"{run}/tables/pneumonia.md"
    assert "SYNTHETIC" in storage.read_text(written["md"])
    assert storage.read_text(written["csv"]).startswith("row,model,n_seeds,AUC_mean")
