"""``hinton`` (trainables/kd/hinton.py): kd_logit's default is ``losses.hinton_kd`` itself, bit
for bit in the loss, its components and the gradients (the pneumonia-kd numbers must not
move), and that formula against numpy. Through kd_logit's Task: test_kd_logit.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrkd.trainables.kd import get_kd
from cxrkd.trainables.losses import LossError, hinton_kd


def test_hinton_is_a_direct_hinton_kd_call_bit_for_bit():
    rng = np.random.default_rng(0)
    draw = [rng.normal(0, 3, 9), rng.normal(0, 3, 9)]
    y = torch.tensor(rng.integers(0, 2, 9), dtype=torch.float32)
    s1, t1 = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in draw)
    s2, t2 = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in draw)
    out = get_kd("hinton").on("binary").compute(s1, t1, y, alpha=0.35, temperature=5.0)
    want = hinton_kd(s2, t2, y, alpha=0.35, temperature=5.0)
    assert out.keys() == want.keys() == {"loss", "ce", "kd"}
    for key in out:
        assert torch.equal(out[key], want[key]), key
    out["loss"].backward()
    want["loss"].backward()
    assert torch.equal(s1.grad, s2.grad) and t1.grad is None and t2.grad is None


def test_hinton_against_numpy():
    rng = np.random.default_rng(1)
    s, t = (rng.normal(0, 2, 6).astype(np.float32).astype(np.float64) for _ in range(2))
    y = rng.integers(0, 2, 6).astype(np.float64)
    out = get_kd("hinton").on("binary").compute(
        torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
        torch.tensor(y, dtype=torch.float32), alpha=0.2, temperature=2.0,
    )  # fmt: skip
    p = 1 / (1 + np.exp(-s))
    ce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    pt, ps = 1 / (1 + np.exp(-t / 2)), 1 / (1 + np.exp(-s / 2))
    kd = 4 * np.mean(pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)))
    want = {"ce": ce, "kd": kd, "loss": 0.2 * ce + 0.8 * kd}
    assert {k: float(v) for k, v in out.items()} == pytest.approx(want, rel=1e-5)


def test_hinton_declares_kd_logits_old_defaults_and_range():
    hinton = get_kd("hinton").on("binary")
    assert hinton.params == ("alpha", "temperature") and hinton.blocks is None
    assert dict(hinton.defaults) == {"alpha": 0.5, "temperature": 4.0}
    assert dict(hinton.limits) == {"alpha": (0.0, 1.0)}
    z = torch.zeros(3)
    with pytest.raises(LossError, match=r"'hinton' needs alpha and temperature, got alpha=None"):
        hinton.compute(z, z, z, temperature=2.0)
    with pytest.raises(LossError, match="alpha must be in \\[0, 1\\], got 1.5"):
        hinton.compute(z, z, z, alpha=1.5, temperature=2.0)
