"""Multi-class tasks (issue 12): the softmax metrics against scikit-learn, what evaluation
and the per-image test scores make of ``(N, C)`` logits, and the methods that learn them
(``transfer``, ``cnn_baseline``: cross-entropy over C logits; ``kd_logit``: Hinton's softmax KD)
through the real loop on a tiny synthetic 3-class dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, first_batch, multiclass_bundle, train_teacher

from cxrkd.trainables.checkpoint import TEST_SCORES_FILE
from cxrkd.trainables.config import ConfigError, parse_config
from cxrkd.trainables.context import TrialContext
from cxrkd.trainables.evaluate import softmax, split_metrics, val_threshold
from cxrkd.trainables.kd import get_kd, kd_names
from cxrkd.trainables.loop import per_image_scores, run_trial
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.metrics import MetricError, confusion_key, multiclass_metrics
from cxrkd.trainables.trainable import LocalReporter

skm = pytest.importorskip("sklearn.metrics")
CLASSES = ("covid", "normal", "pneumonia")
CPU = torch.device("cpu")


def _random_case(seed: int, n: int = 40, c: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y] * rng.random((n, 1))
    logits[5] = logits[6]  # ties
    return y, softmax(logits)


@pytest.mark.parametrize("seed", range(4))
def test_multiclass_metrics_match_sklearn(seed):
    y, p = _random_case(seed)
    got = multiclass_metrics(y, p, CLASSES)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    for j, name in enumerate(CLASSES):
        assert got[f"auroc_{name}"] == pytest.approx(skm.roc_auc_score(y == j, p[:, j]))
    pred = p.argmax(axis=1)
    assert got["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    for key in ("precision", "recall", "f1"):
        metric = getattr(skm, f"{key}_score")
        want = metric(y, pred, average="macro", labels=[0, 1, 2], zero_division=0)
        assert got[key] == pytest.approx(want), key
    cm = skm.confusion_matrix(y, pred, labels=[0, 1, 2])
    for i, true in enumerate(CLASSES):
        for j, predicted in enumerate(CLASSES):
            assert got[confusion_key(true, predicted)] == cm[i, j]
            assert isinstance(got[confusion_key(true, predicted)], int)


def test_a_class_absent_from_the_split_is_left_out_of_the_macro():
    y, p = _random_case(1, c=4)
    keep = y != 3  # the fourth class has no image here: its one-vs-rest AUROC is undefined
    y, p = y[keep], p[keep]
    got = multiclass_metrics(y, p, (*CLASSES, "tb"))
    assert np.isnan(got["auroc_tb"])
    want = np.mean([skm.roc_auc_score(y == j, p[:, j]) for j in range(3)])
    assert got["auc"] == pytest.approx(want)
    # a class never predicted and never true: precision, recall and F1 0, as sklearn says
    pred = p.argmax(axis=1)
    f1 = skm.f1_score(y, pred, average="macro", labels=[0, 1, 2, 3], zero_division=0)
    assert got["f1"] == pytest.approx(f1)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        (np.array([0, 1]), np.ones((2, 2)) / 2, "probs (N, 3)"),
        (np.array([0, 3]), np.ones((2, 3)) / 3, "class indices 0..2"),
        (np.array([0.0, 1.0]), np.ones((2, 3)) / 3, "class indices 0..2"),
        (np.array([0, 1]), np.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]]), "NaN/inf"),
    ],
)
def test_bad_multiclass_input_is_refused(y, p, message):
    with pytest.raises(MetricError, match=message.replace("(", r"\(").replace(")", r"\)")):
        multiclass_metrics(y, p, CLASSES)


@pytest.fixture(scope="module")
def data():
    return multiclass_bundle(n=48, size=16)


def test_split_metrics_and_test_scores_of_class_logits(data):
    rng = np.random.default_rng(3)
    labels = data.split("test").labels
    logits = rng.normal(size=labels.shape).astype(np.float32) * 4
    out = split_metrics(data.info, {"logits": logits}, labels, threshold=0.5)
    y = labels.argmax(axis=1)
    p = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=1).numpy()  # not ours
    np.testing.assert_allclose(softmax(logits), p, rtol=1e-12)
    assert out["loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2]), rel=1e-5)
    assert out["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert "threshold" not in out and val_threshold(data.info, {"logits": logits}, labels) == 0.5
    scores = per_image_scores(data.info, {"logits": logits}, labels)
    assert "global_logit" not in scores and list(scores["finding_names"]) == list(CLASSES)
    np.testing.assert_array_equal(scores["global_label"], y)
    # a float64 sigmoid of the stored log-odds gives the softmax probabilities back
    back = 1 / (1 + np.exp(-scores["finding_logits"]))
    np.testing.assert_allclose(back, p, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("method", "model"), [("transfer", "test_resnet"), ("cnn_baseline", "cnn_baseline")]
)
def test_classifier_trains_one_logit_per_class_with_cross_entropy(data, method, model):
    flat = {**TINY, "method": method, "model": model, "evaluate_test": True}
    task = get_method(method).build(parse_config(flat), data.info, None)
    views, y, _ = first_batch(task, data, train=False)
    out = task(views, y)
    assert out["output"].shape == (6, 3)
    ce = F.cross_entropy(out["output"].detach(), y.argmax(1))
    assert out["loss"].item() == pytest.approx(ce.item())
    reporter = LocalReporter()
    last = run_trial(flat, data, reporter=reporter)
    n_test = len(data.split("test").labels)
    cm = [last[f"test_{confusion_key(a, b)}"] for a in CLASSES for b in CLASSES]
    assert sum(cm) == n_test  # every test image counted once
    for split in ("val", "test"):
        assert 0.0 <= last[f"{split}_auc"] <= 1.0 and f"{split}_auroc_normal" in last
    with np.load(reporter.checkpoints[-1] / TEST_SCORES_FILE) as saved:
        assert saved["finding_logits"].shape == (n_test, 3) and "global_logit" not in saved


@pytest.fixture(scope="module")
def teacher_uri(tmp_path_factory, data):
    return train_teacher(tmp_path_factory.mktemp("run"), data)


def test_kd_logit_hinton_is_softmax_kd_over_the_classes(data, teacher_uri):
    flat = {**TINY, "method": "kd_logit", "model": "test_resnet", "teacher_path": teacher_uri}
    flat.update(alpha=0.3, temperature=2.5)
    torch.manual_seed(0)
    task = get_method("kd_logit").build(
        parse_config(flat), data.info, TrialContext(device=CPU, data=data)
    )
    assert task.cached is not None and task.cached.shape[1] == 3  # cached teacher logits
    views, y, extras = first_batch(task, data, train=False)
    out = task(views, y, **extras)
    s = out["output"].detach().double()
    t = extras["teacher_logits"].double()
    # Hinton et al. 2015, written out in float64: alpha CE + (1 - alpha) T^2 KL(p_t || p_s)
    ce = F.cross_entropy(s, y.argmax(1))
    log_ps, log_pt = F.log_softmax(s / 2.5, 1), F.log_softmax(t / 2.5, 1)
    kd = 2.5**2 * (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
    assert s.shape == (6, 3)
    assert float(out["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(out["kd"]) == pytest.approx(float(kd), rel=1e-4)
    assert out["loss"].item() == pytest.approx(float(0.3 * ce + 0.7 * kd), rel=1e-4)
    last = run_trial(flat, data, reporter=LocalReporter())
    assert 0.0 <= last["val_auc"] <= 1.0 and last["train_kd"] >= 0.0


@pytest.mark.parametrize("approach", [a for a in kd_names("binary") if a != "hinton"])
def test_kd_logit_refuses_one_logit_losses_on_a_multiclass_dataset(data, approach):
    flat = {**TINY, "method": "kd_logit", "model": "test_resnet", "kd_approach": approach,
            "teacher_path": "/nowhere/teachers/x"}  # fmt: skip
    variant = get_kd(approach).on("binary")
    flat.update({k: 0.5 for k in variant.params if k not in variant.defaults})
    with pytest.raises(ConfigError, match=r"takes only \['hinton'\]"):
        get_method("kd_logit").build(parse_config(flat), data.info, None)
