"""``dkd`` (trainables/kd/dkd.py): the general DKD formula at C = 5 against two references
written differently (numpy through the full softmax, and the official code's masking in
torch) and against KL's decomposition; then its binary reduction: NCKD = 0, TCKD = the
Bernoulli KL whatever the label, so on kd_vit's heads DKD is Hinton KD reweighted, and on
kd_logit's one logit it is CE + alpha * TCKD (numpy reference; Hinton KD reparametrised)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrkd.trainables.kd import get_kd
from cxrkd.trainables.kd.dkd import dkd_loss, dkd_terms
from cxrkd.trainables.kd.vanilla import vanilla_multitask_kd
from cxrkd.trainables.losses import LossError, softmax_kl


def tt(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def np_dkd(s: np.ndarray, t: np.ndarray, target: np.ndarray, temp: float):
    """Per-row (TCKD, NCKD) times T^2 in float64, from the full softmax: b = [p_g, 1 - p_g],
    q = the non-target probabilities renormalised."""
    out = []
    for s_row, t_row, g in zip(s, t, target, strict=True):
        ps = np.exp(s_row / temp - np.max(s_row / temp))
        ps /= ps.sum()
        pt = np.exp(t_row / temp - np.max(t_row / temp))
        pt /= pt.sum()
        bs, bt = np.array([ps[g], 1 - ps[g]]), np.array([pt[g], 1 - pt[g]])
        tckd = sum(b_t * math.log(b_t / b_s) for b_t, b_s in zip(bt, bs, strict=True))
        qs, qt = np.delete(ps, g) / (1 - ps[g]), np.delete(pt, g) / (1 - pt[g])
        nckd = sum(q_t * math.log(q_t / q_s) for q_t, q_s in zip(qt, qs, strict=True))
        out.append((temp**2 * tckd, temp**2 * nckd))
    return np.array(out)


def official_dkd(s: torch.Tensor, t: torch.Tensor, target, alpha, beta, temp) -> torch.Tensor:
    """The DKD authors' formulation (mdistiller): probabilities split by masks, NCKD from the
    logits with the target pushed down by 1000."""
    gt = F.one_hot(target, s.shape[1]).float()
    ps, pt = F.softmax(s / temp, dim=1), F.softmax(t / temp, dim=1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], dim=1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * temp**2 / s.shape[0]
    log_qs = F.log_softmax(s / temp - 1000.0 * gt, dim=1)
    qt = F.softmax(t / temp - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_qs, qt, reduction="sum") * temp**2 / s.shape[0]
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_general_dkd_matches_references_at_five_classes(temp):
    rng = np.random.default_rng(5)
    s, t = rng.normal(0, 2, (6, 5)), rng.normal(0, 2, (6, 5))
    target = rng.integers(0, 5, 6)
    out = dkd_loss(tt(s), tt(t), torch.tensor(target), alpha=0.5, beta=8.0, temperature=temp)
    ref = np_dkd(s, t, target, temp).mean(axis=0)
    assert float(out["tckd"]) == pytest.approx(ref[0], rel=1e-5)
    assert float(out["nckd"]) == pytest.approx(ref[1], rel=1e-5)
    assert float(out["loss"]) == pytest.approx(0.5 * ref[0] + 8.0 * ref[1], rel=1e-5)
    assert ref[1] > 0.01  # with 4 non-target classes NCKD is a real term
    official = official_dkd(tt(s), tt(t), torch.tensor(target), 0.5, 8.0, temp)
    assert float(out["loss"]) == pytest.approx(float(official), rel=1e-4)


def test_tckd_and_nckd_decompose_the_kl():
    # DKD eq. 1: KL(p^T || p^S) = TCKD + (1 - p_g^T) * NCKD, row by row.
    rng = np.random.default_rng(6)
    s, t = tt(rng.normal(0, 2, (5, 5))), tt(rng.normal(0, 2, (5, 5)))
    target = torch.tensor(rng.integers(0, 5, 5))
    tckd, nckd = dkd_terms(s, t, target, 2.0)
    p_target = F.softmax(t / 2.0, dim=1).gather(1, target[:, None]).squeeze(1)
    kl = softmax_kl(s, t, 2.0) * 4.0
    torch.testing.assert_close(tckd + (1 - p_target) * nckd, kl, rtol=1e-5, atol=1e-6)


def test_on_binary_logits_nckd_vanishes_and_tckd_is_the_label_free_bernoulli_kl():
    rng = np.random.default_rng(7)
    # float32 inputs, so the float64 reference sees the same numbers
    z_s, z_t = (rng.normal(0, 2, 8).astype(np.float32).astype(np.float64) for _ in range(2))
    s, t = tt(np.stack([np.zeros(8), z_s], 1)), tt(np.stack([np.zeros(8), z_t], 1))
    for label in (0, 1):
        tckd, nckd = dkd_terms(s, t, torch.full((8,), label), 3.0)
        assert torch.equal(nckd, torch.zeros(8))
        p_t, p_s = 1 / (1 + np.exp(-z_t / 3)), 1 / (1 + np.exp(-z_s / 3))
        bern = p_t * np.log(p_t / p_s) + (1 - p_t) * np.log((1 - p_t) / (1 - p_s))
        np.testing.assert_allclose(tckd.numpy(), 9 * bern, rtol=1e-4, atol=2e-6)


def test_dkd_on_kd_vits_heads_is_vanilla_with_equal_head_weights_and_ignores_beta():
    rng = np.random.default_rng(8)
    heads = [tt(rng.normal(0, 2, s)) for s in [(4, 3), (4,), (4, 3), (4,)]]
    out = get_kd("dkd").on("mtl").compute(*heads, alpha=0.8, beta=5.0, temperature=3.0)
    same = get_kd("dkd").on("mtl").compute(*heads, alpha=0.8, beta=0.0, temperature=3.0)
    vanilla = vanilla_multitask_kd(*heads, alpha=0.8, beta=0.8, temperature=3.0)
    assert float(out["nckd_mlct"]) == float(out["nckd_mcct"]) == 0.0
    assert float(out["tckd_mlct"]) == pytest.approx(float(vanilla["kd_mlct"]), rel=1e-5)
    assert float(out["tckd_mcct"]) == pytest.approx(float(vanilla["kd_mcct"]), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(vanilla["loss"]), rel=1e-5)
    assert float(out["loss"]) == float(same["loss"])


def test_bad_dkd_inputs_are_refused():
    s = torch.zeros(3, 4)
    with pytest.raises(LossError, match=r"C >= 2, got \(3, 1\)"):
        dkd_terms(s[:, :1], s[:, :1], torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(LossError, match=r"integer class indices of shape \(3,\), got \(3,\) torch"):
        dkd_terms(s, s, torch.zeros(3), 1.0)
    with pytest.raises(LossError, match="beta must be >= 0, got -1"):
        dkd_loss(s, s, torch.zeros(3, dtype=torch.long), alpha=1.0, beta=-1, temperature=1.0)
    with pytest.raises(LossError, match="temperature must be > 0, got 0"):
        dkd_loss(s, s, torch.zeros(3, dtype=torch.long), alpha=1.0, beta=1.0, temperature=0)
    heads = [s, s[:, 0], s, s[:, 0]]
    with pytest.raises(LossError, match="'dkd' needs temperature"):
        get_kd("dkd").on("mtl").compute(*heads, alpha=1.0, beta=1.0)
    with pytest.raises(LossError, match=r"s_mlct \(3, 4\) and t_mlct \(3, 2\) differ"):
        get_kd("dkd").on("mtl").compute(
            s, s[:, 0], s[:, :2], s[:, 0], alpha=1, beta=1, temperature=2.0
        )


def test_binary_dkd_is_bce_plus_alpha_times_tckd_against_numpy():
    rng = np.random.default_rng(9)
    z_s, z_t = (rng.normal(0, 2, 7).astype(np.float32).astype(np.float64) for _ in range(2))
    y = rng.integers(0, 2, 7).astype(np.float64)
    out = get_kd("dkd").on("binary").compute(tt(z_s), tt(z_t), tt(y), alpha=1.5, temperature=3.0)
    # numpy through the full two-class softmax over [0, z] and the label's class as target
    tckd = []
    for s_row, t_row, g in zip(z_s, z_t, y.astype(int), strict=True):
        ps = np.exp([0.0, s_row / 3]) / np.exp([0.0, s_row / 3]).sum()
        pt = np.exp([0.0, t_row / 3]) / np.exp([0.0, t_row / 3]).sum()
        bs, bt = np.array([ps[g], 1 - ps[g]]), np.array([pt[g], 1 - pt[g]])
        tckd.append(9 * np.sum(bt * np.log(bt / bs)))
    p = 1 / (1 + np.exp(-z_s))
    ce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    want = {"ce": ce, "tckd": np.mean(tckd), "loss": ce + 1.5 * np.mean(tckd)}
    assert {k: float(v) for k, v in out.items()} == pytest.approx(want, rel=1e-5)


def test_binary_dkd_is_hinton_reparametrised_and_refuses_beta():
    rng = np.random.default_rng(10)
    s, t, y = tt(rng.normal(0, 2, 6)), tt(rng.normal(0, 2, 6)), tt(rng.integers(0, 2, 6))
    out = get_kd("dkd").on("binary").compute(s, t, y, alpha=3.0, temperature=2.0)
    hinton = get_kd("hinton").on("binary").compute(s, t, y, alpha=0.25, temperature=2.0)
    assert float(out["loss"]) == pytest.approx(4.0 * float(hinton["loss"]), rel=1e-5)
    assert float(out["tckd"]) == pytest.approx(float(hinton["kd"]), rel=1e-5)
    with pytest.raises(LossError, match="NCKD = 0 .* so beta must be None, got 1.0"):
        get_kd("dkd").on("binary").compute(s, t, y, alpha=1.0, beta=1.0, temperature=2.0)
    with pytest.raises(LossError, match=r"student \(6,\) and target \(5,\) differ"):
        get_kd("dkd").on("binary").compute(s, t, y[:5], alpha=1.0, temperature=2.0)
