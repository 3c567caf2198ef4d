"""Uncertainty of test metrics: bootstrap over test images, and paired tests between models.

Pure numpy, no I/O. A bootstrap resample is a column of integer counts (how often each test
image is drawn), so one ``(n, B)`` count matrix resamples every model and seed the same way
(the images are shared; resampling them jointly is what makes comparisons paired). Each
metric kernel takes that matrix and returns one value per resample; with a single column of
ones it returns the plain metric (``trainables.metrics``), which the tests check. A kernel
sorts the scores once and then works on whole rows of counts: O(n B), no per-resample sort.

- :func:`resample_counts`: ``B`` resamples of ``n`` images, stratified by class (the number
  of positives stays fixed, as in pROC's stratified bootstrap: every resample has both
  classes, so AUROC is always defined).
- :func:`percentile_interval`: the percentile interval of a bootstrap distribution.
- :func:`delong`: fast DeLong (Sun & Xu 2014, IEEE SPL 21(11)) AUCs and their covariance;
  :func:`delong_test`: two-sided p-value of AUC(a) = AUC(b) on the same images.
- :func:`paired_bootstrap_p`: two-sided p-value of a difference from paired resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_BOOT = 1000
SEED = 20140101  # fixed: the same run gives the same intervals every time it is reported


def resample_counts(
    n: int, *, n_boot: int = N_BOOT, strata: np.ndarray | None = None, seed: int = SEED
) -> np.ndarray:
    """``(n, n_boot)`` float counts, one column per multinomial resample of ``n`` images; with
    ``strata`` (one label per image) each stratum is resampled within itself, keeping its size.

    Images are rows so that the kernels' gathers and running sums work on contiguous rows."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"resample_counts needs n >= 1 and n_boot >= 1, got {n}, {n_boot}")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [
        np.flatnonzero(strata == v) for v in np.unique(strata)
    ]  # fmt: skip
    counts = np.zeros((n, n_boot))
    for idx in groups:
        counts[idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), n_boot).T
    return counts


def percentile_interval(values: np.ndarray, *, level: float = 0.95) -> tuple[float, float]:
    """``(low, high)`` percentiles of the finite bootstrap values (NaN, NaN when none are)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(v, [tail, 100 - tail])
    return float(low), float(high)


# --- weighted metric kernels: (n, B) counts, n labels/scores -> (B,) values ---------------------


def _prep(w, y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = np.asarray(w, dtype=float)
    w = w[:, None] if w.ndim == 1 else w
    y = np.asarray(y).reshape(-1).astype(bool)
    s = np.asarray(s, dtype=float).reshape(-1)
    if not (w.shape[0] == y.size == s.size):
        raise ValueError(f"counts {w.shape}, labels {y.shape} and scores {s.shape} disagree")
    return w, y, s


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class _Curve:
    """The ROC/PR curve of every resample at the distinct positive scores, highest first (the
    only thresholds where TP grows; a threshold between them only adds false positives)."""

    dtp: np.ndarray  # (g, B) positive weight at each distinct positive score
    tp: np.ndarray  # (g, B) positive weight at or above it
    fp: np.ndarray  # (g, B) negative weight at or above it
    below: np.ndarray  # (g, B) negative weight below it, ties counted 1/2 (for the AUC)
    n_pos: np.ndarray  # (B,)
    n_neg: np.ndarray  # (B,)


def _sums_of_first(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[x[:k].sum(axis=0) for k in counts]`` (``counts`` ascending): ``np.cumsum(x, axis=0)``
    only where it is needed, one segment at a time (numpy's running sum down the rows of a
    wide matrix is several times slower than summing each segment)."""
    out = np.empty((len(counts), x.shape[1]))
    total = np.zeros(x.shape[1])
    start = 0
    for i, k in enumerate(counts):
        if k > start:
            total += x[start:k].sum(axis=0)
            start = k
        out[i] = total
    return out


def _curve(w, y, s) -> _Curve:
    w, y, s = _prep(w, y, s)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    pos = pos[np.argsort(-s[pos], kind="stable")]
    neg = neg[np.argsort(s[neg], kind="stable")]
    sp, sn = s[pos], s[neg]
    wn = w[neg]
    n_neg = wn.sum(axis=0)
    if pos.size == 0:
        empty = np.zeros((0, w.shape[1]))
        return _Curve(empty, empty, empty, empty, np.zeros(w.shape[1]), n_neg)
    ends = np.flatnonzero(np.r_[sp[1:] != sp[:-1], True])  # last positive of each score
    x = sp[ends]
    tp = _sums_of_first(w[pos], ends + 1)
    # negatives strictly below x, and below or tied with x (x descends, so the counts ascend
    # when read backwards)
    k_lo = np.searchsorted(sn, x, side="left")[::-1]
    k_hi = np.searchsorted(sn, x, side="right")[::-1]
    k_all, inverse = np.unique(np.r_[k_lo, k_hi], return_inverse=True)
    at = _sums_of_first(wn, k_all)[inverse]
    lo, hi = at[: len(x)][::-1], at[len(x) :][::-1]
    dtp = np.diff(tp, axis=0, prepend=np.zeros((1, w.shape[1])))
    return _Curve(dtp, tp, n_neg - lo, 0.5 * (lo + hi), tp[-1], n_neg)


def weighted_auc(w, y, s) -> np.ndarray:
    """Mann-Whitney AUROC (ties count 1/2) of each resample; NaN where a class is absent."""
    c = _curve(w, y, s)
    return _divide(np.sum(c.dtp * c.below, axis=0), c.n_pos * c.n_neg)


def weighted_average_precision(w, y, s) -> np.ndarray:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` of each resample; NaN without positives."""
    c = _curve(w, y, s)
    precision = np.nan_to_num(_divide(c.tp, c.tp + c.fp))
    return _divide(np.sum(c.dtp * precision, axis=0), c.n_pos)


def weighted_sensitivity_at_specificity(w, y, s, *, specificity: float = 0.95) -> np.ndarray:
    """Best TPR of a distinct threshold with specificity >= ``specificity``, per resample."""
    c = _curve(w, y, s)
    ok = c.fp <= np.floor((1.0 - specificity) * c.n_neg + 1e-9)  # in counts, as metrics.py
    best = np.max(np.where(ok, c.tp, 0.0), axis=0, initial=0.0)
    out = _divide(best, c.n_pos)
    out[c.n_neg <= 0] = np.nan
    return out


def weighted_rates(w, y, predicted) -> dict[str, np.ndarray]:
    """Accuracy, precision, recall, F1 and specificity of fixed 0/1 predictions per resample
    (a zero denominator gives 0, as in ``trainables.metrics.binary_report``)."""
    w, y, p = _prep(w, y, np.asarray(predicted, dtype=float))
    p = p.astype(bool)
    tp, fp = (p & y) @ w, (p & ~y) @ w
    fn, tn = (~p & y) @ w, (~p & ~y) @ w

    def ratio(num, den):
        return np.nan_to_num(_divide(num, den))

    return {
        "acc": ratio(tp + tn, tp + tn + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": ratio(tn, tn + fp),
    }


# --- paired tests --------------------------------------------------------------------------


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def delong(y, *scores) -> tuple[np.ndarray, np.ndarray]:
    """``(aucs (k,), covariance (k, k))`` of ``k`` score vectors on the same images.

    Fast DeLong: the placement values come from three mid-rankings per model (positives
    alone, negatives alone, both together) instead of the m x n comparison matrix, so it is
    O(n log n); the covariance is ``S10 / m + S01 / n`` as in DeLong et al. (1988).
    """
    y = np.asarray(y).reshape(-1).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    v10, v01, aucs = [], [], []
    for s in scores:
        s = np.asarray(s, dtype=float).reshape(-1)
        x, z = s[y], s[~y]
        tz = _midranks(np.r_[x, z])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v10.append((tz[:m] - _midranks(x)) / n)  # per positive: share of negatives below
        v01.append(1.0 - (tz[m:] - _midranks(z)) / m)  # per negative: share of positives above
    s10 = np.atleast_2d(np.cov(np.asarray(v10)))
    s01 = np.atleast_2d(np.cov(np.asarray(v01)))
    return np.asarray(aucs), s10 / m + s01 / n


@dataclass(frozen=True)
class PairedTest:
    estimate: float  # metric(a) - metric(b) on the full test set
    p_value: float
    method: str  # "DeLong" | "paired bootstrap"


def _two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def delong_test(y, a, b) -> PairedTest:
    """Two-sided DeLong test of AUC(a) = AUC(b) for scores of two models on the same images."""
    aucs, cov = delong(y, a, b)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:  # identical rankings: no evidence of a difference
        return PairedTest(diff, 1.0 if abs(diff) < 1e-12 else 0.0, "DeLong")
    return PairedTest(diff, _two_sided(diff / math.sqrt(var)), "DeLong")


def paired_bootstrap_p(differences: np.ndarray, observed: float) -> float:
    """Two-sided p-value of ``observed`` (a difference on the full test set) from its paired
    bootstrap distribution, shifted to mean zero (the null): ``(1 + #{|d_b - mean| >=
    |observed|}) / (1 + B)``, so it is never exactly 0."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0 or not np.isfinite(observed):
        return float("nan")
    extreme = np.sum(np.abs(d - d.mean()) >= abs(observed) - 1e-12)
    return float((1 + extreme) / (1 + d.size))
