"""Bootstrap kernels, DeLong and the paired bootstrap, against slow references, scikit-learn
and simulations whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrkd.results import stats
from cxrkd.trainables import metrics as M


def _data(seed: int, n: int = 120, *, shift: float = 1.0, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + shift * y
    return y, (np.round(s, 1) if ties else s)


@pytest.mark.parametrize("seed", range(4))
def test_kernels_with_unit_counts_are_the_plain_metrics(seed):
    y, s = _data(seed)
    ones = np.ones((y.size, 1))  # one resample: every image once
    assert stats.weighted_auc(ones, y, s)[0] == pytest.approx(M.roc_auc(y, s), abs=1e-12)
    ap = stats.weighted_average_precision(ones, y, s)[0]
    assert ap == pytest.approx(M.average_precision(y, s), abs=1e-12)
    sens = stats.weighted_sensitivity_at_specificity(ones, y, s)[0]
    assert sens == pytest.approx(M.sensitivity_at_95(y, s), abs=1e-12)
    rates = stats.weighted_rates(ones, y, s >= 0.3)
    report = M.binary_report(y, s, threshold=0.3)
    for key in ("acc", "precision", "recall", "f1", "specificity"):
        assert rates[key][0] == pytest.approx(report[key], abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_kernels_equal_the_metric_of_the_resampled_images(seed):
    """A column of counts means "image i drawn counts[i] times": check against the explicit
    resample, scored by scikit-learn."""
    skm = pytest.importorskip("sklearn.metrics")
    y, s = _data(seed)
    counts = stats.resample_counts(y.size, n_boot=5, strata=y, seed=seed)
    for row in counts.T:
        idx = np.repeat(np.arange(y.size), row.astype(int))
        yb, sb = y[idx], s[idx]
        assert stats.weighted_auc(row, y, s)[0] == pytest.approx(skm.roc_auc_score(yb, sb))
        ap = stats.weighted_average_precision(row, y, s)[0]
        assert ap == pytest.approx(skm.average_precision_score(yb, sb))
        fpr, tpr, _ = skm.roc_curve(yb, sb, drop_intermediate=False)
        sens = stats.weighted_sensitivity_at_specificity(row, y, s)[0]
        assert sens == pytest.approx(tpr[fpr <= 0.05 + 1e-12].max())
        f1 = stats.weighted_rates(row, y, s >= 0.5)["f1"][0]
        assert f1 == pytest.approx(skm.f1_score(yb, (sb >= 0.5).astype(int)))


def test_resample_counts_are_stratified_and_reproducible():
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    counts = stats.resample_counts(40, n_boot=200, strata=y, seed=7)
    assert counts.shape == (40, 200)
    assert (counts[y == 1].sum(axis=0) == 10).all() and (counts.sum(axis=0) == 40).all()
    np.testing.assert_array_equal(counts, stats.resample_counts(40, n_boot=200, strata=y, seed=7))
    assert not np.array_equal(counts, stats.resample_counts(40, n_boot=200, strata=y, seed=8))
    plain = stats.resample_counts(40, n_boot=200, seed=7)
    assert plain[y == 1].sum(axis=0).std() > 0  # unstratified: the class count varies


def test_percentile_interval_ignores_nans():
    values = np.r_[np.arange(1001.0), np.nan]
    assert stats.percentile_interval(values) == pytest.approx((25.0, 975.0))
    assert all(math.isnan(v) for v in stats.percentile_interval(np.full(3, np.nan)))


def test_bootstrap_interval_covers_the_true_auc_at_about_the_nominal_rate():
    # Positives N(d, 1), negatives N(0, 1): true AUC = Phi(d / sqrt 2).
    d, n, sims = 1.0, 160, 200
    truth = 0.5 * math.erfc(-d / 2)  # Phi(d / sqrt(2)) = 0.760
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(int)
    counts = stats.resample_counts(n, n_boot=400, strata=y, seed=1)
    covered = 0
    for _ in range(sims):
        s = rng.normal(size=n) + d * y
        low, high = stats.percentile_interval(stats.weighted_auc(counts, y, s))
        covered += low <= truth <= high
    # 95% nominal; percentile intervals run a little narrow at this n. Binomial sd ~1.5%.
    assert 0.88 <= covered / sims <= 0.99


# --- DeLong -----------------------------------------------------------------------------------


def slow_delong(y, a, b):
    """O(m n) DeLong et al. (1988): placement values from every (positive, negative) pair."""
    y = np.asarray(y).astype(bool)
    comps = []
    for s in (a, b):
        x, z = s[y][:, None], s[~y][None, :]
        psi = (x > z) + 0.5 * (x == z)
        comps.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
    v10 = np.array([c[0] for c in comps])
    v01 = np.array([c[1] for c in comps])
    cov = np.cov(v10) / y.sum() + np.cov(v01) / (~y).sum()
    aucs = np.array([c[2] for c in comps])
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return aucs, cov, math.erfc(abs(z) / math.sqrt(2))


@pytest.mark.parametrize("seed", range(5))
def test_fast_delong_equals_the_slow_pairwise_version(seed):
    y, a = _data(seed, n=90)
    b = np.round(a + np.random.default_rng(seed + 100).normal(size=a.size), 1)  # correlated
    aucs, cov = stats.delong(y, a, b)
    slow_aucs, slow_cov, slow_p = slow_delong(y, a, b)
    np.testing.assert_allclose(aucs, slow_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, slow_cov, atol=1e-12)
    test = stats.delong_test(y, a, b)
    assert test.p_value == pytest.approx(slow_p, rel=1e-9)
    assert test.estimate == pytest.approx(M.roc_auc(y, a) - M.roc_auc(y, b), abs=1e-12)


def test_delong_aucs_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    y, a = _data(11, n=200)
    aucs, _ = stats.delong(y, a, -a)
    assert aucs[0] == pytest.approx(skm.roc_auc_score(y, a))
    assert aucs[1] == pytest.approx(skm.roc_auc_score(y, -a))


def test_delong_p_values_are_uniform_under_the_null():
    # Two models with independent noise of the same size: equal true AUCs.
    rng = np.random.default_rng(5)
    n, sims = 120, 400
    y = (np.arange(n) % 3 == 0).astype(int)
    p = np.array(
        [
            stats.delong_test(y, y + rng.normal(size=n), y + rng.normal(size=n)).p_value
            for _ in range(sims)
        ]
    )
    assert 0.02 <= np.mean(p < 0.05) <= 0.09
    grid = np.linspace(0.05, 0.95, 19)
    ecdf = np.array([np.mean(p <= g) for g in grid])
    assert np.max(np.abs(ecdf - grid)) < 0.08  # Kolmogorov-Smirnov-like distance


def test_delong_detects_a_real_difference_and_identical_models():
    rng = np.random.default_rng(2)
    y = (np.arange(300) % 2).astype(int)
    good, bad = 2 * y + rng.normal(size=300), 0.2 * y + rng.normal(size=300)
    assert stats.delong_test(y, good, bad).p_value < 1e-6
    same = stats.delong_test(y, good, good)
    assert same.p_value == 1.0 and same.estimate == 0.0
    with pytest.raises(ValueError, match="2 positives"):
        stats.delong(np.r_[1, np.zeros(5, int)], np.arange(6.0))


# --- paired bootstrap -------------------------------------------------------------------------


def test_paired_bootstrap_p_hand_case():
    diffs = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])  # mean 0
    assert stats.paired_bootstrap_p(diffs, 1.5) == pytest.approx((1 + 2) / 6)
    assert stats.paired_bootstrap_p(diffs, 0.0) == 1.0
    assert stats.paired_bootstrap_p(diffs, 10.0) == pytest.approx(1 / 6)
    assert math.isnan(stats.paired_bootstrap_p(np.full(3, np.nan), 0.1))


def _macro(counts, y, s):
    return np.mean([stats.weighted_auc(counts, y[:, j], s[:, j]) for j in range(y.shape[1])], 0)


def test_paired_bootstrap_of_a_macro_auroc_holds_its_level_and_has_power():
    rng = np.random.default_rng(9)
    n, labels, sims = 100, 3, 150
    y = rng.integers(0, 2, (n, labels))
    counts = stats.resample_counts(n, n_boot=300, seed=3)
    ones = np.ones((n, 1))

    def p_value(effect_b: float) -> float:
        a = y + rng.normal(size=y.shape)
        b = effect_b * y + rng.normal(size=y.shape)
        observed = _macro(ones, y, a)[0] - _macro(ones, y, b)[0]
        return stats.paired_bootstrap_p(_macro(counts, y, a) - _macro(counts, y, b), observed)

    null = np.array([p_value(1.0) for _ in range(sims)])
    assert 0.01 <= np.mean(null < 0.05) <= 0.10
    assert np.mean([p_value(0.0) < 0.05 for _ in range(20)]) >= 0.9
