"""Losses checked against numpy written from the formulas, hand-worked cases and limits: the
shared primitives of ``trainables.losses`` and the MLCAK paper's four KD approaches
(``trainables/kd``; what every registered KD loss must do is in ``test_kd.py``).

The numpy references below never call torch: explicit exp/log/sum loops in float64, so a
wrong reduction, a missing T^2 or a swapped KL direction in the code makes them disagree.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from cxrkd.trainables.kd import get_kd, kd_names, paper_approaches
from cxrkd.trainables.kd.last_block import last_block_loss
from cxrkd.trainables.kd.mlcak import mlcak_loss
from cxrkd.trainables.kd.one_to_one import one_to_one_loss
from cxrkd.trainables.kd.vanilla import vanilla_multitask_kd
from cxrkd.trainables.losses import (
    LOSSES,
    LossError,
    feature_mse,
    hinton_kd,
    logit_mse,
    multitask_bce,
)

KD_APPROACHES = {name: get_kd(name).on("mtl").compute for name in paper_approaches()}

LN3 = math.log(3.0)


# ------------------------------------------------------------------ numpy references


def np_softmax(row: np.ndarray) -> np.ndarray:
    e = np.array([math.exp(v - max(row)) for v in row])
    return e / e.sum()


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))


def np_bern_kl(pt: float, ps: float) -> float:
    return np_kl(np.array([pt, 1 - pt]), np.array([ps, 1 - ps]))


def np_bce(z: np.ndarray, y: np.ndarray) -> float:
    p = np_sigmoid(z)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def np_hinton(s, t, y, alpha, temp):
    """Returns (loss, ce, kd) from the formula, K-class (s 2-D) or single-logit (s 1-D)."""
    if s.ndim == 2:
        ce = np.mean([-math.log(np_softmax(s[b])[y[b]]) for b in range(len(s))])
        kls = [np_kl(np_softmax(t[b] / temp), np_softmax(s[b] / temp)) for b in range(len(s))]
    else:
        ce = np_bce(s, y)
        kls = [np_bern_kl(np_sigmoid(t[b] / temp), np_sigmoid(s[b] / temp)) for b in range(len(s))]
    kd = temp**2 * np.mean(kls)
    return alpha * ce + (1 - alpha) * kd, ce, kd


def np_mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a) - np.asarray(b)) ** 2))


def tt(a, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32, requires_grad=grad)


def floats(result: dict) -> dict:
    return {k: float(v) for k, v in result.items()}


# ------------------------------------------------------------------ hinton_kd


def test_hinton_hand_case():
    # Worked by hand: at T=2 the teacher logits [2 ln3, 0] give softmax([ln3, 0]) = [3/4, 1/4];
    # the student [0, 0] gives [1/2, 1/2]. KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120359;
    # kd = T^2 KL = 0.5232481438; ce = -ln(1/2) = ln 2; loss = (ln 2 + kd) / 2 at alpha=0.5.
    out = floats(
        hinton_kd(
            tt([[0.0, 0.0]]), tt([[2 * LN3, 0.0]]), torch.tensor([0]), alpha=0.5, temperature=2.0
        )
    )
    assert out["kd"] == pytest.approx(0.5232481437645479, rel=1e-6)
    assert out["ce"] == pytest.approx(0.6931471805599453, rel=1e-6)
    assert out["loss"] == pytest.approx(0.6081976621622466, rel=1e-6)
    # The same case as one logit z = logit_1 - logit_0: teacher -2 ln3, student 0, target 0.
    single = floats(hinton_kd(tt([0.0]), tt([-2 * LN3]), tt([0.0]), alpha=0.5, temperature=2.0))
    assert single == pytest.approx(out, rel=1e-6)


@pytest.mark.parametrize("alpha,temp", [(0.0, 1.0), (0.3, 2.0), (0.9, 4.0), (1.0, 7.5)])
def test_hinton_matches_numpy_k_class(alpha, temp):
    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 3, (6, 4)), rng.normal(0, 3, (6, 4))
    y = rng.integers(0, 4, 6)
    out = hinton_kd(tt(s), tt(t), torch.tensor(y), alpha=alpha, temperature=temp)
    expected = np_hinton(s, t, y, alpha, temp)
    got = (float(out["loss"]), float(out["ce"]), float(out["kd"]))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("shape", [(5,), (5, 1)])
@pytest.mark.parametrize("alpha,temp", [(0.25, 1.0), (0.5, 3.0)])
def test_hinton_matches_numpy_single_logit(shape, alpha, temp):
    rng = np.random.default_rng(1)
    s, t = rng.normal(0, 3, 5), rng.normal(0, 3, 5)
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    out = hinton_kd(
        tt(s).reshape(shape),
        tt(t).reshape(shape),
        tt(y).reshape(shape),
        alpha=alpha,
        temperature=temp,
    )
    got = (float(out["loss"]), float(out["ce"]), float(out["kd"]))
    assert got == pytest.approx(np_hinton(s, t, y, alpha, temp), rel=1e-5, abs=1e-6)


def test_single_logit_equals_two_class_logits_0_z():
    rng = np.random.default_rng(2)
    zs, zt = rng.normal(0, 2, 7), rng.normal(0, 2, 7)
    y = rng.integers(0, 2, 7)
    single = hinton_kd(tt(zs), tt(zt), tt(y), alpha=0.4, temperature=3.0)
    two = hinton_kd(
        tt(np.stack([np.zeros(7), zs], 1)),
        tt(np.stack([np.zeros(7), zt], 1)),
        torch.tensor(y),
        alpha=0.4,
        temperature=3.0,
    )
    assert floats(single) == pytest.approx(floats(two), rel=1e-5)


def test_hinton_limits():
    rng = np.random.default_rng(3)
    s, t, y = rng.normal(0, 2, (8, 3)), rng.normal(0, 2, (8, 3)), rng.integers(0, 3, 8)
    pure = floats(hinton_kd(tt(s), tt(t), torch.tensor(y), alpha=1.0, temperature=4.0))
    assert pure["loss"] == pytest.approx(pure["ce"]) and pure["kd"] > 0
    assert pure["ce"] == pytest.approx(np_hinton(s, t, y, 1.0, 1.0)[1], rel=1e-5)
    same = floats(hinton_kd(tt(s), tt(s), torch.tensor(y), alpha=0.0, temperature=4.0))
    assert same["kd"] == pytest.approx(0.0, abs=1e-6) and same["loss"] == same["kd"]
    for seed in range(5):
        r = np.random.default_rng(seed)
        kd = hinton_kd(
            tt(r.normal(0, 5, (4, 5))),
            tt(r.normal(0, 5, (4, 5))),
            torch.tensor(r.integers(0, 5, 4)),
            alpha=0.5,
            temperature=2.0,
        )["kd"]
        assert float(kd) > 0


def test_hinton_kd_gradient_is_t_times_prob_gap_over_batch():
    rng = np.random.default_rng(4)
    temp, batch = 3.0, 4
    s, t = rng.normal(0, 2, (batch, 3)), rng.normal(0, 2, (batch, 3))
    student = tt(s, grad=True)
    hinton_kd(student, tt(t), torch.tensor([0, 1, 2, 0]), alpha=0.2, temperature=temp)[
        "kd"
    ].backward()
    expected = np.stack(
        [temp * (np_softmax(s[b] / temp) - np_softmax(t[b] / temp)) / batch for b in range(batch)]
    )
    np.testing.assert_allclose(student.grad.numpy(), expected, rtol=1e-4, atol=1e-6)
    # Single logit: d kd / d z_s = T (sigmoid(z_s/T) - sigmoid(z_t/T)) / B.
    z = tt(s[:, 0], grad=True)
    hinton_kd(z, tt(t[:, 0]), tt([0, 1, 1, 0]), alpha=0.2, temperature=temp)["kd"].backward()
    expected = temp * (np_sigmoid(s[:, 0] / temp) - np_sigmoid(t[:, 0] / temp)) / batch
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_hinton_rejects_bad_alpha(alpha):
    with pytest.raises(LossError, match=re.escape(repr(alpha))):
        hinton_kd(tt([0.0]), tt([0.0]), tt([1.0]), alpha=alpha, temperature=1.0)


@pytest.mark.parametrize("temperature", [0, -1.0, 0.0, float("nan")])
def test_hinton_rejects_bad_temperature(temperature):
    with pytest.raises(LossError, match=rf"temperature.*{re.escape(repr(temperature))}"):
        hinton_kd(tt([0.0]), tt([0.0]), tt([1.0]), alpha=0.5, temperature=temperature)


@pytest.mark.parametrize(
    "s_shape,t_shape,target,message",
    [
        ((4, 3), (4, 2), torch.tensor([0, 1, 2, 0]), r"\(4, 3\) and teacher_logits \(4, 2\)"),
        ((4, 3), (4, 3), torch.tensor([0, 1, 2]), r"target \(3,\)"),
        ((4, 3), (4, 3), torch.zeros(4), "integer class indices"),
        ((4,), (4, 1), torch.zeros(4), r"\(4,\) and teacher_logits \(4, 1\)"),
        ((4,), (4,), torch.zeros(5), r"target \(5,\)"),
        ((4, 1, 1), (4, 1, 1), torch.zeros(4), "one logit per image"),
    ],
)
def test_hinton_rejects_bad_shapes(s_shape, t_shape, target, message):
    with pytest.raises(LossError, match=message):
        hinton_kd(torch.zeros(s_shape), torch.zeros(t_shape), target, alpha=0.5, temperature=1.0)


# ------------------------------------------------------------------ MLCAK building blocks


def test_multitask_bce_matches_numpy():
    rng = np.random.default_rng(5)
    mlct, findings = rng.normal(0, 2, (6, 4)), rng.integers(0, 2, (6, 4)).astype(float)
    mcct, glob = rng.normal(0, 2, 6), rng.integers(0, 2, 6).astype(float)
    out = floats(multitask_bce(tt(mlct), tt(mcct).reshape(6, 1), tt(findings), tt(glob)))
    bce_mlct = np_bce(mlct.ravel(), findings.ravel())
    assert out["bce_mlct"] == pytest.approx(bce_mlct, rel=1e-5)
    assert out["bce_mcct"] == pytest.approx(np_bce(mcct, glob), rel=1e-5)
    assert out["loss"] == pytest.approx(bce_mlct + np_bce(mcct, glob), rel=1e-5)
    with pytest.raises(LossError, match=r"mlct_logits \(6, 4\) and findings_target \(6, 3\)"):
        multitask_bce(tt(mlct), tt(mcct), tt(findings[:, :3]), tt(glob))
    with pytest.raises(LossError, match=r"mcct_logits \(6,\) and global_target \(5,\)"):
        multitask_bce(tt(mlct), tt(mcct), tt(findings), tt(glob[:5]))


def test_mse_terms_hand_cases():
    # (1-3)^2 and (2-2)^2 averaged: 2.
    assert float(logit_mse(tt([[1.0, 2.0]]), tt([[3.0, 2.0]]))) == pytest.approx(2.0)
    student = [torch.zeros(1, 2, 3)]
    teacher = [torch.ones(1, 2, 3), torch.full((1, 2, 3), 3.0)]
    # Teacher mean block is all 2s, student mean all 0s: MSE 4, though block counts differ.
    assert float(mlcak_loss(student, teacher)) == pytest.approx(4.0)
    # The last blocks alone: 3^2.
    assert float(last_block_loss(student, teacher)) == pytest.approx(9.0)
    # Blocks [0, 4] vs [1, 3]: 1:1 pairs give (1 + 1) / 2 = 1, but the means (2 vs 2) agree.
    s2 = [torch.zeros(1, 2, 3), torch.full((1, 2, 3), 4.0)]
    assert float(one_to_one_loss(s2, teacher)) == pytest.approx(1.0)
    assert float(mlcak_loss(s2, teacher)) == pytest.approx(0.0)


def test_feature_losses_match_numpy():
    rng = np.random.default_rng(6)
    hs_s = [rng.normal(size=(2, 5, 8)) for _ in range(3)]
    hs_t = [rng.normal(size=(2, 5, 8)) for _ in range(3)]
    ts, tt_ = [tt(h) for h in hs_s], [tt(h) for h in hs_t]
    assert float(feature_mse(ts[0], tt_[0])) == pytest.approx(np_mse(hs_s[0], hs_t[0]), rel=1e-5)
    assert float(last_block_loss(ts, tt_)) == pytest.approx(np_mse(hs_s[2], hs_t[2]), rel=1e-5)
    one = np.mean([np_mse(a, b) for a, b in zip(hs_s, hs_t, strict=True)])
    assert float(one_to_one_loss(ts, tt_)) == pytest.approx(one, rel=1e-5)
    mean_s, mean_t = sum(hs_s) / 3, sum(hs_t[:2]) / 2
    assert float(mlcak_loss(ts, tt_[:2])) == pytest.approx(np_mse(mean_s, mean_t), rel=1e-5)


def test_feature_losses_reject_bad_inputs():
    a, b = torch.zeros(2, 5, 8), torch.zeros(2, 5, 16)
    with pytest.raises(LossError, match=r"\(2, 5, 8\).*\(2, 5, 16\).*project the student"):
        feature_mse(a, b)
    with pytest.raises(LossError, match="equal block counts.*student 2 vs teacher 3"):
        one_to_one_loss([a, a], [a, a, a])
    with pytest.raises(LossError, match="non-empty"):
        mlcak_loss([], [a])
    with pytest.raises(LossError, match="share one shape"):
        mlcak_loss([a, torch.zeros(2, 4, 8)], [a])
    with pytest.raises(LossError, match=r"student logits \(3,\) and teacher logits \(3, 1\)"):
        logit_mse(torch.zeros(3), torch.zeros(3, 1))  # would silently broadcast to (3, 3)


# ------------------------------------------------------------------ KD approaches


def _heads(rng, batch=4, findings=3):
    return [
        tt(rng.normal(0, 2, (batch, findings))),
        tt(rng.normal(0, 2, batch)),
        tt(rng.normal(0, 2, (batch, findings))),
        tt(rng.normal(0, 2, batch)),
    ]


def test_vanilla_hand_case_and_numpy():
    # sigmoid(+-ln3) = 3/4, 1/4 against the student's 1/2: both labels have Bernoulli KL
    # 0.1308120359 (see test_hinton_hand_case), times T^2 = 4; the MCCT logits agree, so 0.
    out = floats(
        vanilla_multitask_kd(
            tt([[0.0, 0.0]]),
            tt([1.0]),
            tt([[2 * LN3, -2 * LN3]]),
            tt([1.0]),
            alpha=0.5,
            beta=2.0,
            temperature=2.0,
        )
    )
    assert out["kd_mlct"] == pytest.approx(0.5232481437645479, rel=1e-6)
    assert out["kd_mcct"] == pytest.approx(0.0, abs=1e-7)
    assert out["loss"] == pytest.approx(0.5 * 0.5232481437645479, rel=1e-6)
    s_mlct, s_mcct, t_mlct, t_mcct = (h.numpy() for h in _heads(np.random.default_rng(7)))
    out = floats(
        vanilla_multitask_kd(
            *_heads(np.random.default_rng(7)), alpha=0.3, beta=0.7, temperature=3.0
        )
    )
    per_label = [
        np_bern_kl(np_sigmoid(t / 3), np_sigmoid(s / 3))
        for s, t in zip(s_mlct.ravel(), t_mlct.ravel(), strict=True)
    ]
    per_image = [
        np_bern_kl(np_sigmoid(t / 3), np_sigmoid(s / 3))
        for s, t in zip(s_mcct, t_mcct, strict=True)
    ]
    assert out["kd_mlct"] == pytest.approx(9 * np.mean(per_label), rel=1e-5)
    assert out["kd_mcct"] == pytest.approx(9 * np.mean(per_image), rel=1e-5)
    assert out["loss"] == pytest.approx(0.3 * out["kd_mlct"] + 0.7 * out["kd_mcct"], rel=1e-6)
    # The MCCT term is the single-logit Hinton KD term.
    single = hinton_kd(tt(s_mcct), tt(t_mcct), torch.zeros(4), alpha=0.0, temperature=3.0)
    assert out["kd_mcct"] == pytest.approx(float(single["kd"]), rel=1e-6)


@pytest.mark.parametrize(
    "name,feature",
    [("last_block", last_block_loss), ("one_to_one", one_to_one_loss), ("mlcak", mlcak_loss)],
)
def test_feature_approaches_combine_mse_terms(name, feature):
    rng = np.random.default_rng(8)
    heads = _heads(rng)
    hs_s = [tt(rng.normal(size=(4, 5, 6))) for _ in range(2)]
    hs_t = [tt(rng.normal(size=(4, 5, 6))) for _ in range(2)]
    out = floats(
        KD_APPROACHES[name](
            *heads, alpha=0.5, beta=2.0, gamma=3.0, hs_student=hs_s, hs_teacher=hs_t
        )
    )
    s_mlct, s_mcct, t_mlct, t_mcct = (h.numpy() for h in heads)
    assert out["kd_mlct"] == pytest.approx(np_mse(s_mlct, t_mlct), rel=1e-5)
    assert out["kd_mcct"] == pytest.approx(np_mse(s_mcct, t_mcct), rel=1e-5)
    assert out["feat"] == pytest.approx(float(feature(hs_s, hs_t)), rel=1e-6)
    expected = 0.5 * out["kd_mlct"] + 2.0 * out["kd_mcct"] + 3.0 * out["feat"]
    assert out["loss"] == pytest.approx(expected, rel=1e-5)


def test_kd_approaches_reject_misused_arguments():
    heads = _heads(np.random.default_rng(9))
    hs = [torch.zeros(4, 5, 6)]
    with pytest.raises(LossError, match="'vanilla' KD has no feature term, so gamma"):
        vanilla_multitask_kd(*heads, alpha=1.0, beta=1.0, temperature=1.0, gamma=0.5)
    with pytest.raises(LossError, match="hs_student must be None"):
        vanilla_multitask_kd(*heads, alpha=1.0, beta=1.0, temperature=1.0, hs_student=hs)
    kw = {"alpha": 1.0, "beta": 1.0, "hs_student": hs, "hs_teacher": hs}
    with pytest.raises(LossError, match="takes no temperature, got temperature=4.0"):
        KD_APPROACHES["mlcak"](*heads, gamma=1.0, temperature=4.0, **kw)
    with pytest.raises(LossError, match="'last_block' needs gamma"):
        KD_APPROACHES["last_block"](*heads, **kw)
    with pytest.raises(LossError, match="gamma must be >= 0, got -0.5"):
        KD_APPROACHES["one_to_one"](*heads, gamma=-0.5, **kw)
    with pytest.raises(LossError, match="beta must be >= 0, got -1"):
        vanilla_multitask_kd(*heads, alpha=1.0, beta=-1, temperature=1.0)
    with pytest.raises(LossError, match="hs_teacher must be a non-empty list.*None"):
        KD_APPROACHES["mlcak"](*heads, alpha=1.0, beta=1.0, gamma=1.0, hs_student=hs)
    with pytest.raises(LossError, match=r"s_mcct must be one logit per image.*\(4, 2\)"):
        KD_APPROACHES["mlcak"](heads[0], torch.zeros(4, 2), heads[2], heads[3], gamma=1.0, **kw)
    with pytest.raises(TypeError):
        KD_APPROACHES["mlcak"](*heads, 1.0, 1.0, 1.0)  # weights are keyword-only


def test_kd_registry():
    assert paper_approaches() == ("vanilla", "last_block", "one_to_one", "mlcak")
    assert kd_names()[:4] == paper_approaches()  # the paper's order comes first everywhere
    feature = {name for name in paper_approaches() if get_kd(name).blocks is not None}
    assert feature == {"last_block", "one_to_one", "mlcak"}
    with pytest.raises(TypeError):
        LOSSES["new"] = hinton_kd  # read-only: registering happens in this module only


# ------------------------------------------------------------------ every registered loss


def _hs(rng, n, grad):
    return [tt(rng.normal(size=(3, 4, 5)), grad=grad) for _ in range(n)]


def _example(name, rng):
    """(args, kwargs, student tensors, teacher tensors) for each registered loss."""
    if name == "hinton_kd":
        s, t = tt(rng.normal(size=(3, 4)), grad=True), tt(rng.normal(size=(3, 4)), grad=True)
        return (s, t, torch.tensor([0, 3, 1])), {"alpha": 0.5, "temperature": 2.0}, [s], [t]
    if name == "multitask_bce":
        s = [tt(rng.normal(size=(3, 4)), grad=True), tt(rng.normal(size=3), grad=True)]
        targets = [tt(rng.integers(0, 2, (3, 4))), tt(rng.integers(0, 2, 3))]
        return (*s, *targets), {}, s, []
    s = [tt(rng.normal(size=(3, 4)), grad=True), tt(rng.normal(size=3), grad=True)]
    t = [tt(rng.normal(size=(3, 4)), grad=True), tt(rng.normal(size=3), grad=True)]
    kwargs = {"alpha": 0.5, "beta": 1.5}
    if name == "vanilla":
        kwargs["temperature"] = 2.0
        return (s[0], s[1], t[0], t[1]), kwargs, s, t
    hs_s, hs_t = _hs(rng, 2, True), _hs(rng, 2, True)
    kwargs.update(gamma=0.7, hs_student=hs_s, hs_teacher=hs_t)
    # last_block only reads (and so only trains) the last block.
    trained = hs_s[-1:] if name == "last_block" else hs_s
    return (s[0], s[1], t[0], t[1]), kwargs, s + trained, t + hs_t


def _criterion(name):
    return KD_APPROACHES.get(name) or LOSSES[name]


CRITERIA = sorted(LOSSES) + list(paper_approaches())


@pytest.mark.parametrize("name", CRITERIA)
def test_every_loss_contract(name):
    args, kwargs, student, teacher = _example(name, np.random.default_rng(10))
    out = _criterion(name)(*args, **kwargs)
    assert "loss" in out and len(out) >= 3
    for key, value in out.items():
        assert value.ndim == 0 and torch.isfinite(value), key
        assert float(value.detach()) >= 0.0, key
    out["loss"].backward()
    for tensor in student:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0
    for tensor in teacher:
        assert tensor.grad is None  # the teacher is a constant target


@pytest.mark.parametrize("name", [n for n in CRITERIA if n != "multitask_bce"])
def test_every_kd_loss_is_zero_when_student_equals_teacher(name):
    args, kwargs, student, teacher = _example(name, np.random.default_rng(11))
    pairs = list(zip(student[:2], teacher[:2], strict=False))
    pairs += list(zip(kwargs.get("hs_student", []), kwargs.get("hs_teacher", []), strict=True))
    with torch.no_grad():
        for s, t in pairs:
            t.copy_(s)
    if name == "hinton_kd":
        kwargs["alpha"] = 0.0  # only the KD term
    assert float(_criterion(name)(*args, **kwargs)["loss"].detach()) == pytest.approx(0.0, abs=1e-6)


def test_losses_in_float32_under_bf16_inputs():
    s = torch.tensor([[0.0, 0.0]], dtype=torch.bfloat16)
    t = torch.tensor([[2 * LN3, 0.0]], dtype=torch.float32)
    out = hinton_kd(s, t, torch.tensor([0]), alpha=0.0, temperature=2.0)
    assert out["loss"].dtype == torch.float32
    assert float(out["kd"]) == pytest.approx(0.5232481437645479, rel=1e-4)
