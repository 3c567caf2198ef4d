"""Metrics against hand-counted small cases and brute-force pair/threshold loops."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from cxrkd.trainables.metrics import (
    MetricError,
    average_precision,
    binary_metric_names,
    binary_metrics,
    binary_report,
    choose_threshold,
    multilabel_auroc,
    multilabel_macro,
    roc_auc,
    sensitivity_at_95,
    sensitivity_at_specificity,
)

# Six samples with ties. Positives score 0.35, 0.8, 0.4; negatives 0.1, 0.4, 0.8. Counting the
# 9 (pos, neg) pairs by hand, win = 1, tie = 1/2:
#   0.35 vs (0.1, 0.4, 0.8) -> 1 + 0 + 0     = 1
#   0.8  vs (0.1, 0.4, 0.8) -> 1 + 1 + 1/2   = 2.5
#   0.4  vs (0.1, 0.4, 0.8) -> 1 + 1/2 + 0   = 1.5      AUC = 5 / 9
Y6 = np.array([0, 0, 1, 1, 0, 1])
S6 = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.4])


def brute_auc(y, s) -> float:
    pos = [b for a, b in zip(y, s, strict=True) if a == 1]
    neg = [b for a, b in zip(y, s, strict=True) if a == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_hand_case_with_ties():
    assert roc_auc(Y6, S6) == pytest.approx(5 / 9)
    assert roc_auc(Y6.tolist(), S6.tolist()) == pytest.approx(5 / 9)  # plain lists work too


def test_auc_limits():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))  # one class: undefined
    assert math.isnan(roc_auc([], []))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pair_counting(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40), 1)  # rounding forces many ties
    assert roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    # AUC depends on the order of the scores only.
    assert roc_auc(y, np.exp(3 * s)) == pytest.approx(roc_auc(y, s), abs=1e-12)


def test_bad_inputs_raise_with_the_value():
    with pytest.raises(MetricError, match=r"only 0/1, got values \[0, 1, 2\]"):
        roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match=r"\(3,\) and \(2,\)"):
        roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="1 NaN/inf"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(MetricError, match="criterion must be one of.*'auc'"):
        choose_threshold(Y6, S6, criterion="auc")
    with pytest.raises(MetricError, match="threshold must be a finite number, got nan"):
        binary_report(Y6, S6, threshold=float("nan"))


# Ten samples, 3 positives, 7 negatives, scores descending:
#   y = 1   1   0   0   1   0   0   0   0   0
#   s = .9  .8  .7  .6  .5  .4  .3  .2  .1  .05
# By hand, predicting positive at s >= thr:
#   thr .8: tp 2 fp 0 fn 1 -> Youden 2/3 - 0 = .667, F1 = 4/5 = .800 (best F1)
#   thr .5: tp 3 fp 2 fn 0 -> Youden 1 - 2/7 = .714 (best Youden), F1 = 6/8 = .750
# (every other threshold is worse on both; see the brute-force test below).
Y10 = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0])
S10 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])


def test_choose_threshold_known_best():
    assert choose_threshold(Y10, S10) == 0.5
    assert choose_threshold(Y10, S10, criterion="youden") == 0.5
    assert choose_threshold(Y10, S10, criterion="f1") == 0.8


def test_choose_threshold_ties_take_the_highest():
    # thr .9: Youden 1/2 - 0; thr .7: 1 - 1/2. Equal: the higher (fewer positives) wins.
    assert choose_threshold([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == 0.9


def brute_threshold(y, s, criterion):
    best, best_thr = -np.inf, None
    for thr in sorted(set(s.tolist()), reverse=True):
        tp = sum(1 for a, b in zip(y, s, strict=True) if a == 1 and b >= thr)
        fp = sum(1 for a, b in zip(y, s, strict=True) if a == 0 and b >= thr)
        n_pos, n_neg = sum(y), len(y) - sum(y)
        value = tp / n_pos - fp / n_neg if criterion == "youden" else 2 * tp / (tp + fp + n_pos)
        if value > best + 1e-12:
            best, best_thr = value, thr
    return best_thr


@pytest.mark.parametrize("criterion", ["youden", "f1"])
@pytest.mark.parametrize("seed", range(4))
def test_choose_threshold_matches_brute_force(criterion, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 30)
    s = np.round(np.clip(rng.normal(0.4 + 0.3 * y, 0.2), 0, 1), 2)  # informative, with ties
    assert choose_threshold(y, s, criterion=criterion) == brute_threshold(y, s, criterion)


def test_choose_threshold_needs_both_classes():
    with pytest.raises(MetricError, match="0 positive and 3 negative"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3])


def test_binary_report_hand_case():
    # pred = s >= .5 -> [1, 0, 1, 0, 1, 1] (0.5 itself counts as positive) against
    # y = [1, 1, 0, 0, 1, 0]: tp = #{0, 4} = 2, fp = #{2, 5} = 2, fn = #{1} = 1, tn = #{3} = 1;
    # specificity = tn / (tn + fp) over the 3 negatives = 1/3.
    out = binary_report([1, 1, 0, 0, 1, 0], [0.9, 0.4, 0.6, 0.2, 0.5, 0.5], threshold=0.5)
    assert out == pytest.approx(
        {
            "acc": 3 / 6,
            "precision": 2 / 4,
            "recall": 2 / 3,
            "f1": 2 * 2 / (2 * 2 + 2 + 1),
            "specificity": 1 / 3,
            "tn": 1,
            "fp": 2,
            "fn": 1,
            "tp": 2,
        }
    )
    assert all(type(out[k]) is int for k in ("tn", "fp", "fn", "tp"))


def test_binary_report_zero_denominators_are_zero_without_warnings():
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        none_predicted = binary_report([1, 0, 1], [0.1, 0.2, 0.3], threshold=0.9)
        no_negatives = binary_report([1, 1], [0.1, 0.9], threshold=0.5)
        no_positives = binary_report([0, 0], [0.1, 0.9], threshold=0.5)
    assert none_predicted["precision"] == 0.0 and none_predicted["f1"] == 0.0
    assert none_predicted["recall"] == 0.0 and none_predicted["specificity"] == 1.0
    assert no_negatives["specificity"] == 0.0 and no_negatives["recall"] == 0.5
    assert no_positives["recall"] == 0.0 and no_positives["precision"] == 0.0


EXPECTED_KEYS = [
    "auc",
    "auprc",
    "sens_at_spec95",
    "acc",
    "precision",
    "recall",
    "f1",
    "specificity",
    "tn",
    "fp",
    "fn",
    "tp",
    "acc_at_val_thr",
    "precision_at_val_thr",
    "recall_at_val_thr",
    "f1_at_val_thr",
    "specificity_at_val_thr",
    "tn_at_val_thr",
    "fp_at_val_thr",
    "fn_at_val_thr",
    "tp_at_val_thr",
    "threshold",
]


def test_binary_metrics_keys_and_values():
    out = binary_metrics(Y10, S10, val_threshold=0.8)
    assert list(out) == EXPECTED_KEYS == list(binary_metric_names())
    # At 0.5: tp 3 fp 2 fn 0 tn 5 (see the table above Y10); at 0.8: tp 2 fp 0 fn 1 tn 7.
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (3, 2, 0, 5)
    assert (out["tp_at_val_thr"], out["fp_at_val_thr"], out["fn_at_val_thr"]) == (2, 0, 1)
    assert out["tn_at_val_thr"] == 7
    assert out["acc"] == pytest.approx(0.8) and out["acc_at_val_thr"] == pytest.approx(0.9)
    assert out["f1_at_val_thr"] == pytest.approx(0.8) and out["threshold"] == 0.8
    assert out["auc"] == pytest.approx(brute_auc(Y10, S10))


def test_multilabel_macro_skips_a_constant_label():
    y = np.stack([Y6, [0, 0, 0, 1, 1, 1], np.zeros(6, int)], axis=1)
    s = np.stack([S6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], np.linspace(0, 1, 6)], axis=1)
    macro, per_label = multilabel_auroc(y, s, ["ties", "perfect", "constant"])
    assert per_label["ties"] == pytest.approx(5 / 9) and per_label["perfect"] == 1.0
    assert math.isnan(per_label["constant"])
    assert macro == pytest.approx((5 / 9 + 1.0) / 2)
    macro, _ = multilabel_auroc(np.zeros((3, 1)), np.ones((3, 1)), ["constant"])
    assert math.isnan(macro)
    with pytest.raises(MetricError, match=r"\(N, 2\) for 2 labels, got \(6, 3\)"):
        multilabel_auroc(y, s, ["a", "b"])
    with pytest.raises(MetricError, match="unique"):
        multilabel_auroc(y, s, ["a", "a", "b"])


# --- AUPRC and sensitivity at 95% specificity; everything against scikit-learn ---------------


def test_average_precision_hand_case():
    # Scores descending: y = 1, 0, 1. Recall steps of 1/2 at precision 1/1 and 2/3.
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # One tie group holding everything: a single step to recall 1 at precision 3/6.
    assert average_precision(Y6, np.full(6, 0.3)) == pytest.approx(0.5)
    assert average_precision([0, 1, 1], [0.1, 0.8, 0.9]) == 1.0
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))  # no positives: undefined


def test_sensitivity_at_specificity_hand_case():
    # 20 negatives at 0..19 and 4 positives at 18.5, 17.5, 10.5, 30. At 95% specificity one
    # false positive (of 20) is allowed: threshold 18.5 -> fp 1 (the 19), tp 2 (30 and 18.5).
    y = np.r_[np.zeros(20, int), np.ones(4, int)]
    s = np.r_[np.arange(20.0), [18.5, 17.5, 10.5, 30.0]]
    assert sensitivity_at_specificity(y, s, specificity=0.95) == pytest.approx(2 / 4)
    assert sensitivity_at_specificity(y, s, specificity=0.90) == pytest.approx(3 / 4)
    assert sensitivity_at_specificity(y, s, specificity=1.0) == pytest.approx(1 / 4)
    assert sensitivity_at_95(y, s) == pytest.approx(2 / 4)
    assert math.isnan(sensitivity_at_specificity([1, 1], [0.1, 0.2]))
    with pytest.raises(MetricError, match="specificity must be in"):
        sensitivity_at_specificity(y, s, specificity=95)


def _tied_scores(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(rng.normal(size=n) + y, 1)  # rounded: many ties


@pytest.mark.parametrize("seed", range(6))
def test_auroc_and_auprc_match_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    y, s = _tied_scores(seed)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("specificity", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("seed", range(4))
def test_sensitivity_at_specificity_matches_sklearn_roc_curve(seed, specificity):
    skm = pytest.importorskip("sklearn.metrics")
    y, s = _tied_scores(seed, n=301)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    expected = tpr[fpr <= 1 - specificity + 1e-12].max()
    assert sensitivity_at_specificity(y, s, specificity=specificity) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(4))
def test_binary_report_matches_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    y, s = _tied_scores(seed)
    thr = float(np.median(s))
    pred = (s >= thr).astype(int)
    out = binary_report(y, s, threshold=thr)
    assert out["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    assert out["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert out["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert out["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert out["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (out["tn"], out["fp"], out["fn"], out["tp"]) == (tn, fp, fn, tp)


def test_multilabel_macro_matches_sklearn_macro():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (150, 4))
    s = rng.normal(size=(150, 4)) + y
    names = ["a", "b", "c", "d"]
    macro, _ = multilabel_auroc(y, s, names)
    assert macro == pytest.approx(skm.roc_auc_score(y, s, average="macro"))
    ap, per = multilabel_macro(y, s, names, metric=average_precision)
    assert ap == pytest.approx(skm.average_precision_score(y, s, average="macro"))
    assert per["b"] == pytest.approx(skm.average_precision_score(y[:, 1], s[:, 1]))


def test_split_metrics_report_auprc_and_sensitivity_for_both_tasks():
    from types import SimpleNamespace

    from cxrkd.trainables.evaluate import split_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (120, 3)).astype(np.float32)
    mlct = (rng.normal(size=(120, 2)) + 2 * labels[:, :2]).astype(np.float32)
    mcct = (rng.normal(size=(120, 1)) + 2 * labels[:, 2:]).astype(np.float32)
    info = SimpleNamespace(
        task="multilabel", finding_labels=("effusion", "nodule"), label_columns=lambda: ((0, 1), 2)
    )
    out = split_metrics(info, {"mlct": mlct, "mcct": mcct}, labels, threshold=0.5)
    p = 1 / (1 + np.exp(-mlct.astype(np.float64)))
    ap = [average_precision(labels[:, j], p[:, j]) for j in range(2)]
    assert out["auprc_mlct"] == pytest.approx(np.mean(ap), abs=1e-6)
    sens = [sensitivity_at_95(labels[:, j], p[:, j]) for j in range(2)]
    assert out["sens_at_spec95_mlct"] == pytest.approx(np.mean(sens))
    g = 1 / (1 + np.exp(-mcct[:, 0].astype(np.float64)))
    assert out["auprc_mcct"] == out["auprc"] == pytest.approx(average_precision(labels[:, 2], g))
    assert out["sens_at_spec95_mcct"] == pytest.approx(sensitivity_at_95(labels[:, 2], g))
    binary = SimpleNamespace(task="binary", finding_labels=(), label_columns=lambda: ((), 0))
    out = split_metrics(binary, {"logits": mcct}, labels[:, 2:], threshold=0.5)
    assert out["auprc"] == pytest.approx(average_precision(labels[:, 2], g))
    assert out["sens_at_spec95"] == pytest.approx(sensitivity_at_95(labels[:, 2], g))
