"""Classification metrics: numpy arrays in, plain floats/ints/dicts out (no sklearn).

Scores are probabilities (sigmoid of the logit); an image is predicted positive when
``score >= threshold``. Thresholds are chosen on validation (``choose_threshold``) and then
applied unchanged to test.

Keys of ``binary_metrics`` (flat and stable: the loop prefixes them with ``val_``/``test_``
before ``tune.report``, and ``results/`` reads these names):

=========================== ===============================================================
``auc``                     ROC AUC (threshold-free); NaN when one class is absent
``auprc``                   average precision (area under the precision-recall steps); NaN
                            without positives
``sens_at_spec95``          sensitivity (TPR) at 95% specificity: the best TPR of a ROC point
                            with FPR <= 5%; NaN when one class is absent
``acc`` ``precision``       at the fixed threshold 0.5
``recall`` ``f1``
``specificity``
``tn`` ``fp`` ``fn`` ``tp`` confusion counts at 0.5 (ints)
``<name>_at_val_thr``       each of the nine above, at the threshold chosen on validation
``threshold``               that validation threshold
=========================== ===============================================================

Multi-class tasks (:func:`multiclass_metrics`; scores are the softmax probabilities ``(N, C)``,
the prediction their argmax, no threshold): ``auc`` is the one-vs-rest macro AUROC (classes
absent from the split, or the only class in it, are left out, as ``multilabel_macro`` does),
``auroc_<class>`` each class's one-vs-rest AUROC, ``acc`` the accuracy, ``precision``, ``recall``
and ``f1`` their macro means over the classes (``recall`` is the balanced accuracy), and
``cm:<true>:<predicted>`` the confusion matrix (ints, one key per pair of class names).

Edge cases: a ratio whose denominator is zero is 0.0 with no warning (no predicted
positives -> precision 0; no positives -> recall 0; no negatives -> specificity 0; precision
and recall both 0 -> f1 0). AUC is NaN (documented, not an error) when ``y_true`` holds only one
class, because it is undefined there; ``multilabel_auroc`` skips such labels in its macro.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrkd.trainables.errors import CxrkdError


class MetricError(CxrkdError, ValueError):
    """Metric inputs with a bad shape, label or score."""


CRITERIA = ("youden", "f1")
_COUNTS = ("tn", "fp", "fn", "tp")
_RATES = ("acc", "precision", "recall", "f1", "specificity")


def _check(y_true: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise MetricError(
            f"y_true and scores must be 1-D of equal length, got {y.shape} and {s.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise MetricError(f"y_true must hold only 0/1, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(s).all():
        raise MetricError(f"scores must be finite, got {int((~np.isfinite(s)).sum())} NaN/inf")
    return y.astype(bool), s


def roc_auc(y_true: object, scores: object) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score_pos > score_neg) + 0.5 P(tie).

    Computed from mid-ranks (tied scores share their average rank), O(n log n).
    Returns NaN when ``y_true`` has only one class (or is empty): AUC is undefined there.
    """
    y, s = _check(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Rank of a tie group = mean of the 1-based positions it occupies in sorted order.
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = mid_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _roc_steps(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative ``(tp, fp)`` at each distinct score, highest first (ties move together)."""
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    last = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tp = np.cumsum(y_desc)[last].astype(np.float64)
    return tp, (last + 1) - tp


def average_precision(y_true: object, scores: object) -> float:
    """Average precision: ``sum_k (R_k - R_{k-1}) P_k`` over distinct scores, descending.

    The area under the precision-recall steps (scikit-learn's ``average_precision_score``).
    Returns NaN when there is no positive (recall is undefined); 1.0 for a perfect ranking.
    """
    y, s = _check(y_true, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    tp, fp = _roc_steps(y, s)
    recall_step = np.diff(np.r_[0.0, tp]) / n_pos
    return float(np.sum(recall_step * tp / (tp + fp)))


def sensitivity_at_specificity(
    y_true: object, scores: object, *, specificity: float = 0.95
) -> float:
    """The highest sensitivity (TPR) of a threshold whose specificity is >= ``specificity``.

    Read off the ROC curve at its distinct thresholds (no interpolation between them), from
    the point (0, 0) on; NaN when ``y_true`` has only one class.
    """
    if not 0.0 <= specificity <= 1.0:
        raise MetricError(f"specificity must be in [0, 1], got {specificity!r}")
    y, s = _check(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tp, fp = _roc_steps(y, s)
    # fp / n_neg <= 1 - specificity, in counts (no float rounding at e.g. 5 of 100).
    ok = fp <= np.floor((1.0 - specificity) * n_neg + 1e-9)
    return float(np.max(tp[ok], initial=0.0) / n_pos)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _f1(tp: float, fp: float, fn: float) -> float:
    # 2PR/(P+R) == 2tp/(2tp+fp+fn), which is 0 (not NaN) when tp == 0.
    return _ratio(2 * tp, 2 * tp + fp + fn)


def choose_threshold(y_true: object, scores: object, *, criterion: str = "youden") -> float:
    """The score threshold that maximises ``criterion`` on (validation) data.

    ``"youden"``: TPR - FPR; ``"f1"``: F1 of the positive class. Candidates are the distinct
    scores (predict positive when ``score >= threshold``), so the result is one of ``scores``;
    among equally good candidates the highest (fewest positives) wins. Needs both classes.
    """
    if criterion not in CRITERIA:
        raise MetricError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    y, s = _check(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError(
            f"choosing a threshold needs both classes, got {n_pos} positive and {n_neg} negative;"
            " use a validation split that holds both"
        )
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    # Last index of each run of equal scores: the candidate "predict positive if >= this".
    last = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tp = np.cumsum(y_desc)[last]
    fp = (last + 1) - tp
    if criterion == "youden":
        value = tp / n_pos - fp / n_neg
    else:
        value = 2 * tp / (2 * tp + fp + (n_pos - tp))
    # argmax returns the first maximum, i.e. the highest threshold among ties.
    return float(s_desc[last][int(np.argmax(value))])


def binary_report(y_true: object, scores: object, *, threshold: float) -> dict[str, float | int]:
    """Accuracy, precision, recall, f1, specificity and tn/fp/fn/tp at ``score >= threshold``."""
    y, s = _check(y_true, scores)
    if not isinstance(threshold, (int, float, np.number)) or not np.isfinite(threshold):
        raise MetricError(f"threshold must be a finite number, got {threshold!r}")
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    return {
        "acc": _ratio(tp + tn, y.size),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _f1(tp, fp, fn),
        "specificity": _ratio(tn, tn + fp),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def binary_metrics(
    y_true: object, scores: object, *, val_threshold: float
) -> dict[str, float | int]:
    """All binary metrics under the flat key names of the module docstring."""
    out: dict[str, float | int] = {
        "auc": roc_auc(y_true, scores),
        "auprc": average_precision(y_true, scores),
        "sens_at_spec95": sensitivity_at_specificity(y_true, scores, specificity=0.95),
    }
    out.update(binary_report(y_true, scores, threshold=0.5))
    at_val = binary_report(y_true, scores, threshold=val_threshold)
    out.update({f"{key}_at_val_thr": value for key, value in at_val.items()})
    out["threshold"] = float(val_threshold)
    return out


def binary_metric_names() -> tuple[str, ...]:
    """The keys ``binary_metrics`` returns, in order (for schemas and tests)."""
    base = (*_RATES, *_COUNTS)
    return (
        "auc",
        "auprc",
        "sens_at_spec95",
        *base,
        *(f"{k}_at_val_thr" for k in base),
        "threshold",
    )


def multilabel_auroc(
    y_true: object, scores: object, labels: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """Per-label ROC AUC of ``(N, L)`` 0/1 targets and ``(N, L)`` scores, and their macro mean.

    ``per_label`` has every label; a label with one class only gets NaN and is left out of the
    macro mean. The macro is NaN when no label has both classes.
    """
    return multilabel_macro(y_true, scores, labels, metric=roc_auc)


def multilabel_macro(
    y_true: object, scores: object, labels: Sequence[str], *, metric=roc_auc
) -> tuple[float, dict[str, float]]:
    """``metric(y[:, j], scores[:, j])`` per label and the mean of the defined (non-NaN) ones."""
    y = np.asarray(y_true)
    s = np.asarray(scores)
    labels = list(labels)
    if y.ndim != 2 or s.shape != y.shape or y.shape[1] != len(labels):
        raise MetricError(
            f"y_true and scores must both be (N, {len(labels)}) for {len(labels)} labels, "
            f"got {y.shape} and {s.shape}"
        )
    if len(set(labels)) != len(labels):
        raise MetricError(f"label names must be unique, got {labels}")
    per_label = {name: metric(y[:, j], s[:, j]) for j, name in enumerate(labels)}
    defined = [v for v in per_label.values() if not np.isnan(v)]
    macro = float(np.mean(defined)) if defined else float("nan")
    return macro, per_label


def sensitivity_at_95(y_true: object, scores: object) -> float:
    """:func:`sensitivity_at_specificity` at 95% specificity (the key ``sens_at_spec95``)."""
    return sensitivity_at_specificity(y_true, scores, specificity=0.95)


CONFUSION_PREFIX = "cm:"  # multi-class confusion keys: f"cm:{true}:{predicted}"


def confusion_key(true: str, predicted: str) -> str:
    return f"{CONFUSION_PREFIX}{true}:{predicted}"


def _check_multiclass(y_true: object, probs: object, classes: Sequence[str]):
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    if y.ndim != 1 or p.shape != (y.size, len(classes)) or len(classes) < 2:
        raise MetricError(
            f"y_true must be (N,) class indices and probs (N, {len(classes)}) for classes "
            f"{classes}, got {y.shape} and {p.shape}"
        )
    if len(set(classes)) != len(classes):
        raise MetricError(f"class names must be unique, got {classes}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]):
        raise MetricError(
            f"y_true must hold class indices 0..{len(classes) - 1}, got {np.unique(y)[:10]}"
        )
    if not np.isfinite(p).all():
        raise MetricError(f"probs must be finite, got {int((~np.isfinite(p)).sum())} NaN/inf")
    return y, p, classes


def confusion_matrix(y_true: object, predicted: object, n_classes: int) -> np.ndarray:
    """``(C, C)`` int counts: row = true class, column = predicted class."""
    flat = np.asarray(y_true) * n_classes + np.asarray(predicted)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def multiclass_metrics(
    y_true: object, probs: object, classes: Sequence[str]
) -> dict[str, float | int]:
    """The multi-class metrics of the module docstring, from class indices ``(N,)`` and
    probabilities ``(N, C)`` (columns in the order of ``classes``)."""
    y, p, classes = _check_multiclass(y_true, probs, classes)
    one_hot = (y[:, None] == np.arange(len(classes))).astype(np.int8)
    macro, per_class = multilabel_macro(one_hot, p, classes)
    cm = confusion_matrix(y, p.argmax(axis=1), len(classes))
    tp = np.diag(cm).astype(np.float64)
    # per class: precision tp / predicted, recall tp / true, F1 2tp / (predicted + true)
    precision = [_ratio(t, n) for t, n in zip(tp, cm.sum(axis=0), strict=True)]
    recall = [_ratio(t, n) for t, n in zip(tp, cm.sum(axis=1), strict=True)]
    f1 = [_f1(t, a - t, b - t) for t, a, b in zip(tp, cm.sum(0), cm.sum(1), strict=True)]
    out: dict[str, float | int] = {
        "auc": macro,
        "acc": _ratio(tp.sum(), y.size),
        "precision": float(np.mean(precision)),
        "recall": float(np.mean(recall)),
        "f1": float(np.mean(f1)),
    }
    out.update({f"auroc_{name}": value for name, value in per_class.items()})
    for i, true in enumerate(classes):
        out.update({confusion_key(true, pred): int(cm[i, j]) for j, pred in enumerate(classes)})
    return out
