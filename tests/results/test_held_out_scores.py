"""Per-image test scores: written by the loop into the last checkpoint, found by the report
(through the recorded checkpoint or a scan of Tune's trial folders), turned into ROC curves."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow.fs as pafs
import pytest
from synthetic_run import scores_of, write_synthetic_run

from cxrkd.results.held_out_scores import (
    TEST_SCORES_FILE,
    load_test_scores,
    locate_test_scores,
    roc_curve,
    roc_curves,
)
from cxrkd.trainables.metrics import roc_auc


def test_the_file_name_is_the_one_the_checkpoint_writes():
    from cxrkd.trainables import checkpoint

    assert checkpoint.TEST_SCORES_FILE == TEST_SCORES_FILE


def _bundle(n: int = 64, size: int = 16):
    from cxrkd.trainables.context import DataBundle
    from cxrkd.trainables.data.pipeline import DatasetInfo, SplitData

    rng = np.random.default_rng(0)
    splits = {}
    for split, count in {"train": n, "val": n // 2, "test": n // 2}.items():
        y = (np.arange(count) % 2).astype(np.float32)
        x = rng.integers(0, 80, size=(count, size, size)).astype(np.uint8)
        x[y == 1, 4:12, 4:12] = 220  # a bright blob: learnable in a few steps
        splits[split] = SplitData.from_arrays(x, y[:, None])
    info = DatasetInfo(
        name="tiny", kind="test", task="binary", labels=("pneumonia",), finding_labels=(),
        global_label="pneumonia", resolution=size, n={s: len(d) for s, d in splits.items()},
        positive_rate={}, fingerprint="fp", synthetic=True,
    )  # fmt: skip
    return DataBundle(info=info, splits=splits)


def test_the_final_trial_saves_its_test_scores_in_its_last_checkpoint(tmp_path):
    from cxrkd.trainables.loop import run_trial
    from cxrkd.trainables.trainable import LocalReporter

    reporter = LocalReporter(keep=tmp_path)
    flat = {"method": "cnn_baseline", "model": "cnn_baseline", "img_size": 16, "epochs": 2}
    flat |= {"batch_size": 8, "steps_per_epoch": 2, "evaluate_test": True, "lr": 3e-3}
    run_trial(flat, _bundle(), reporter=reporter)
    first, last = reporter.checkpoints
    assert not (first / TEST_SCORES_FILE).exists()  # the test split is scored once, at the end
    with np.load(last / TEST_SCORES_FILE) as npz:
        scores = dict(npz)
    assert set(scores) == {"global_logit", "global_label"}
    assert scores["global_label"].tolist() == [0.0, 1.0] * 16  # the test split, in order
    curves = roc_curves({("c", "t"): scores})
    assert curves["auc"].iloc[0] == pytest.approx(reporter.rows[-1]["test_auc"], abs=1e-9)


def test_multilabel_scores_keep_the_findings():
    from cxrkd.trainables.loop import per_image_scores

    info = SimpleNamespace(
        task="multilabel", finding_labels=("effusion", "nodule"), label_columns=lambda: ((0, 1), 2)
    )
    labels = np.array([[1, 0, 1], [0, 0, 0]], dtype=np.float32)
    outputs = {"mlct": np.array([[2.0, -1.0], [-2.0, -3.0]]), "mcct": np.array([[1.5], [-0.5]])}
    out = per_image_scores(info, outputs, labels)
    assert out["global_logit"].tolist() == [1.5, -0.5]
    assert out["global_label"].tolist() == [1.0, 0.0]
    assert out["finding_labels"].tolist() == [[1, 0], [0, 0]]
    assert out["finding_names"].tolist() == ["effusion", "nodule"]


def test_checkpoint_uri_names_local_paths_and_remote_uris():
    from cxrkd.search.records import checkpoint_uri

    local = SimpleNamespace(filesystem=pafs.LocalFileSystem(), path="/runs/r/final/t/ckpt")
    assert checkpoint_uri(local) == "/runs/r/final/t/ckpt"
    s3 = SimpleNamespace(
        filesystem=pafs.S3FileSystem(anonymous=True, region="us-east-1"), path="b/r/ckpt"
    )
    assert checkpoint_uri(s3) == "s3://b/r/ckpt"
    assert checkpoint_uri(None) is None


def test_scores_are_found_by_record_or_by_scanning_tunes_folders(tmp_path):
    run = tmp_path / "run"
    trials, _ = write_synthetic_run(run)
    located = locate_test_scores(str(run), trials)
    final = trials[trials["stage"] == "final"]
    assert set(located) == set(zip(final["cell"], final["trial_id"], strict=True))
    for (_, tid), uri in located.items():
        assert uri.endswith(f"/checkpoint_000001/{TEST_SCORES_FILE}") and f"_{tid}_" in uri
    # A recorded checkpoint that is gone (a run folder copied without it) falls back to a scan.
    stale = trials.assign(checkpoint_uri="/nowhere/checkpoint_000001")
    assert locate_test_scores(str(run), stale) == located
    loaded = load_test_scores(str(run), trials)
    first = loaded[("resnet50_teacher", "f-resnet50_teacher-0")]
    np.testing.assert_array_equal(first["global_logit"], scores_of(0)["global_logit"])


def test_runs_without_saved_scores_have_none(tmp_path):
    run = tmp_path / "run"
    trials, _ = write_synthetic_run(run)
    for path in run.glob(f"final/*/checkpoint_*/{TEST_SCORES_FILE}"):
        path.unlink()
    assert locate_test_scores(str(run), trials) == {}
    assert locate_test_scores(str(tmp_path / "empty"), trials) == {}


def test_roc_curve_steps_over_tied_scores_together():
    fpr, tpr = roc_curve([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]


def test_roc_curve_area_equals_the_mann_whitney_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounded: many ties
    curves = roc_curves({("c", "t"): {"global_label": y, "global_logit": s}})
    assert curves["auc"].iloc[0] == pytest.approx(roc_auc(y, s), abs=1e-12)


def test_roc_curves_skip_a_split_with_one_class_and_roc_curve_says_why():
    one_class = {("c", "t"): {"global_label": np.ones(5), "global_logit": np.arange(5.0)}}
    assert roc_curves(one_class).empty
    with pytest.raises(ValueError, match="both classes"):
        roc_curve(np.ones(5), np.arange(5.0))
