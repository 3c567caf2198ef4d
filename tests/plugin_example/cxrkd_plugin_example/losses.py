"""The plugin's loss, pure (no registration): logit-matching KD with the hard-label CE.

``loss = alpha * BCE(s, y) + (1 - alpha) * mean((s - t)^2)`` on one logit per image: the
student regresses the teacher's logit (Ba & Caruana 2014) besides learning the label.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cxrkd.trainables.losses import LossError, check_unit_weight, logit_mse, refuse_unused


def logit_mse_kd(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    temperature: float | None = None,
    hs_student=None,
    hs_teacher=None,
) -> dict[str, Tensor]:
    """``{"loss", "ce", "kd"}`` under cxrkd's binary KD contract (trainables.kd)."""
    refuse_unused("'logit_mse' has one weight, alpha, and no feature term", beta=beta,
                  gamma=gamma, temperature=temperature, hs_student=hs_student,
                  hs_teacher=hs_teacher)  # fmt: skip
    if alpha is None:
        raise LossError("'logit_mse' needs alpha, got None")
    alpha = check_unit_weight("alpha", alpha)
    ce = F.binary_cross_entropy_with_logits(student.float(), target.float())
    kd = logit_mse(student, teacher)
    return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce, "kd": kd}
