"""``fitnets`` (trainables/kd/fitnets.py): the hint and guided blocks at half depth of each
model, and the single-stage loss against numpy. Through kd_vit's Task (the adapter as the
regressor, the cached hint): tests/trainables/test_vit_methods.py."""

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
    out = get_kd("fitnets").compute(
        *(tt(h) for h in heads),
        alpha=0.3,
        beta=1.7,
        gamma=0.6,
        hs_student=MIDDLE.pick([tt(h) for h in student]),
        hs_teacher=MIDDLE.pick([tt(h) for h in teacher]),
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
        get_kd("fitnets").compute(a[:, 0, :3], a[:, 0, 0], a[:, 0, :3], a[:, 0, 0], alpha=1.0,
                                  beta=1.0, hs_student=[a], hs_teacher=[a])  # fmt: skip
