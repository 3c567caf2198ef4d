"""``fitnets`` (trainables/kd/fitnets.py): the hint and guided blocks at half depth of each
model, and the single-stage loss of both layouts against references written out (numpy for
kd_vit's heads, plain torch for kd_logit's one logit). Through kd_vit's Task (the adapter as
the regressor, the cached hint): tests/trainables/test_vit_methods.py; through kd_logit's
(the CNN projection, the online teacher's tapped stage): test_kd_logit.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrkd.trainables.kd import get_kd
from cxrkd.trainables.kd.fitnets import MIDDLE, hint_loss, middle_block
from cxrkd.trainables.losses import LossError


def tt(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


@pytest.mark.parametrize(("depth", "index"), [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (12, 5)])
def test_hint_is_the_block_at_half_depth(depth, index):
    blocks = [torch.full((1, 2, 3), float(i)) for i in range(depth)]
    (picked,) = middle_block(blocks)
    assert picked is blocks[index]  # block ceil(N/2) of N, counted from 1
    assert MIDDLE.pick is middle_block and not MIDDLE.every_block  # one cached target


def test_fitnets_is_logit_mse_plus_the_hint_mse_between_models_of_other_depths():
    rng = np.random.default_rng(3)
    heads = [rng.normal(0, 2, s) for s in [(4, 3), (4,), (4, 3), (4,)]]
    student = [rng.normal(size=(4, 5, 6)) for _ in range(3)]  # guided: block 2 of 3
    teacher = [rng.normal(size=(4, 5, 6)) for _ in range(4)]  # hint: block 2 of 4
    out = (
        get_kd("fitnets")
        .on("mtl")
        .compute(
            *(tt(h) for h in heads),
            alpha=0.3,
            beta=1.7,
            gamma=0.6,
            hs_student=MIDDLE.pick([tt(h) for h in student]),
            hs_teacher=MIDDLE.pick([tt(h) for h in teacher]),
        )
    )
    s_mlct, s_mcct, t_mlct, t_mcct = heads
    hint = np.square(student[1] - teacher[1]).sum() / student[1].size
    kd_mlct = np.square(s_mlct - t_mlct).sum() / s_mlct.size
    kd_mcct = np.square(s_mcct - t_mcct).sum() / s_mcct.size
    want = {"kd_mlct": kd_mlct, "kd_mcct": kd_mcct, "feat": hint}
    want["loss"] = 0.3 * kd_mlct + 1.7 * kd_mcct + 0.6 * hint
    assert {k: float(v) for k, v in out.items()} == pytest.approx(want, rel=1e-5)


def test_hint_compares_one_block_with_one_block():
    a = torch.zeros(2, 5, 8)
    assert float(hint_loss([a], [a + 2])) == pytest.approx(4.0)
    with pytest.raises(LossError, match="one guided block with one hint block, got student 2"):
        hint_loss([a, a], [a])
    with pytest.raises(LossError, match=r"\(2, 5, 8\).*\(2, 5, 16\).*project the student"):
        hint_loss([a], [torch.zeros(2, 5, 16)])  # the regressor's job, before the loss
    with pytest.raises(LossError, match="'fitnets' needs gamma"):
        get_kd("fitnets").on("mtl").compute(a[:, 0, :3], a[:, 0, 0], a[:, 0, :3], a[:, 0, 0],
                                            alpha=1.0, beta=1.0, hs_student=[a],
                                            hs_teacher=[a])  # fmt: skip


def test_binary_fitnets_is_the_students_bce_plus_the_weighted_hint_of_the_middle_stages():
    rng = np.random.default_rng(4)
    s, t = rng.normal(0, 2, 5), rng.normal(0, 2, 5)
    y = rng.integers(0, 2, 5).astype(float)
    stages_s = [rng.normal(size=(5, 6, 4, 4)) for _ in range(4)]  # guided: stage 2 of 4
    stages_t = [rng.normal(size=(5, 6, 4, 4)) for _ in range(5)]  # hint: stage 3 of 5
    out = get_kd("fitnets").on("binary").compute(
        tt(s), tt(t), tt(y), gamma=2.5,
        hs_student=MIDDLE.pick([tt(h) for h in stages_s]),
        hs_teacher=MIDDLE.pick([tt(h) for h in stages_t]),
    )  # fmt: skip
    # Plain torch, in float64: BCE as -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))].
    s64, y64 = torch.tensor(s), torch.tensor(y)
    p = 1 / (1 + torch.exp(-s64))
    ce = -(y64 * torch.log(p) + (1 - y64) * torch.log(1 - p)).mean()
    diff = torch.tensor(stages_s[1]) - torch.tensor(stages_t[2])
    hint = (diff * diff).sum() / diff.numel()
    want = {"ce": float(ce), "feat": float(hint), "loss": float(ce + 2.5 * hint)}
    assert {k: float(v) for k, v in out.items()} == pytest.approx(want, rel=1e-5)


def test_binary_fitnets_reads_no_teacher_logit_and_no_soft_target_weight():
    rng = np.random.default_rng(5)
    s, y = tt(rng.normal(size=4)), tt(rng.integers(0, 2, 4))
    hs = [tt(rng.normal(size=(4, 3, 2, 2)))]
    loss = get_kd("fitnets").on("binary")
    first = loss.compute(s, tt(rng.normal(size=4)), y, gamma=1.0, hs_student=hs, hs_teacher=hs)
    other = loss.compute(s, tt(rng.normal(size=4)), y, gamma=1.0, hs_student=hs, hs_teacher=hs)
    assert torch.equal(first["loss"], other["loss"])  # the teacher's logit is not read
    assert loss.params == ("gamma",) and loss.blocks is MIDDLE
    for weight in ("alpha", "temperature"):
        with pytest.raises(LossError, match=f"no soft-target term, so {weight} must be None"):
            loss.compute(s, s, y, gamma=1.0, hs_student=hs, hs_teacher=hs, **{weight: 1.0})
