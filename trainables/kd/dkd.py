"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), on binary logits: every
head of ``kd_vit`` (layout ``mtl``) and ``kd_logit``'s one logit (layout ``binary``).

DKD splits the KL of Hinton KD over C classes with ground-truth class g into
``KL = TCKD + (1 - p_g^T) * NCKD`` and weights the two parts freely:

- ``TCKD = KL(b^T || b^S)``, ``b = [p_g, 1 - p_g]``: target vs all non-target probability;
- ``NCKD = KL(q^T || q^S)``, ``q = softmax`` over the C - 1 non-target logits only;
- ``DKD = alpha * T^2 * TCKD + beta * T^2 * NCKD`` (both at temperature T, batch mean).

:func:`dkd_loss` is that general formula (tested at C=5 against a reference).

**mtl** (``kd_vit``): its heads are binary: every MLCT finding is its own sigmoid logit and MCCT
is ONE logit per image, i.e. the two-class softmax over ``[0, z]`` (``trainables.losses``
conventions). With C = 2 the non-target part has one class, so ``q^T = q^S = [1]`` and **NCKD is
identically 0**: beta has no effect, and TCKD is the whole binary KL whatever the label (``b``
is ``[p_1, p_0]`` or ``[p_0, p_1]``, the same KL), so no labels are needed and class 1 is passed
as the target. On these heads DKD therefore reduces to ``loss = alpha * T^2 * (KL_mlct +
KL_mcct)``: Hinton KD reweighted, the same as ``vanilla`` with its two head weights equal. It is
registered for the comparison it allows (and for a multi-class head, where it differs), not
because it adds a new signal here.

Search fragment: ``alpha`` uniform in [0, 2] (DKD uses alpha = 1; 0 switches KD off, and
every approach searches alpha this way, which one Optuna study of all of them needs),
``temperature`` log-uniform in [1, 20] (DKD: T = 4 on CIFAR-100, 1 on ImageNet). ``beta``
(DKD: 1 to 8) is NOT searched: it multiplies NCKD = 0 here, so a searched value would only
add noise to the search and to the tables; it stays at the config's default 1.0.
Not reproduced: DKD's linear warm-up of the KD weight over the first 20 epochs.
Components: ``tckd_mlct``, ``tckd_mcct``, ``nckd_mlct``, ``nckd_mcct`` (each ``T^2 *`` its
KL, mean over findings x images or images); ``loss = alpha * (tckd_mlct + tckd_mcct) + beta
* (nckd_mlct + nckd_mcct)``.

**binary** (``kd_logit``'s one logit per image, the ResNet pair): DKD's whole training loss,
``loss = CE(y) + alpha * T^2 * TCKD`` (DKD's training loss, its CE weight 1), the logit as
the two classes ``[0, z]`` and the label as the target class (TCKD is the same KL whichever
class it is). Reads the student's and the
teacher's logits and the label. NCKD is identically 0 here too (one non-target class), so
beta is not read (the config refuses it) and no ``nckd`` component is logged. TCKD is then
the Bernoulli KL of Hinton KD, so binary DKD is Hinton KD with the hard-label term at weight
1 and the soft term at ``alpha``: the same gradient direction as ``hinton`` with
``alpha_hinton = 1 / (1 + alpha)``, scaled by ``1 + alpha``. It differs from ``hinton`` in
its parametrisation (an unbounded KD weight, DKD's alpha = 1 the usual value), not in its
signal. Searched: alpha uniform in [0, 2], temperature log-uniform in [1, 20], as above.
Components: ``ce``, ``tckd``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cxrkd.trainables.kd import Variant, register_kd
from cxrkd.trainables.kd._space import suggest_alpha, suggest_temperature
from cxrkd.trainables.losses import (
    LossError,
    binary_logits,
    check_heads,
    check_nonneg_weight,
    check_same_shape,
    check_temperature,
    refuse_unused,
    shape_of,
)


def dkd_terms(
    student: Tensor, teacher: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """``(T^2 * TCKD, T^2 * NCKD)`` per row for logits ``(B, C)``, C >= 2, and class indices
    ``target`` ``(B,)``; the teacher is detached, everything in float32."""
    check_same_shape("student logits", student, "teacher logits", teacher)
    if student.ndim != 2 or student.shape[1] < 2:
        raise LossError(f"DKD needs logits of shape (B, C) with C >= 2, got {shape_of(student)}")
    if target.shape != student.shape[:1] or target.is_floating_point():
        raise LossError(
            f"target must be integer class indices of shape ({student.shape[0]},), got "
            f"{shape_of(target)} {target.dtype}"
        )
    b, c = student.shape
    is_target = F.one_hot(target, c).bool()
    s = student.float() / temperature
    t = teacher.detach().float() / temperature

    def split(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log p_target, log p_non-target (their sum), log q over the non-target classes."""
        log_norm = torch.logsumexp(z, dim=1)
        non_target = z[~is_target].view(b, c - 1)
        log_p_target = z[is_target] - log_norm
        log_p_rest = torch.logsumexp(non_target, dim=1) - log_norm
        return log_p_target, log_p_rest, F.log_softmax(non_target, dim=1)

    s_target, s_rest, s_q = split(s)
    t_target, t_rest, t_q = split(t)
    tckd = t_target.exp() * (t_target - s_target) + t_rest.exp() * (t_rest - s_rest)
    nckd = (t_q.exp() * (t_q - s_q)).sum(dim=1)
    return tckd * temperature**2, nckd * temperature**2


def dkd_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float,
) -> dict[str, Tensor]:
    """The general DKD loss: ``alpha * tckd + beta * nckd``, each a batch mean of ``T^2`` times
    its KL (see the module docstring). Returns ``{"loss", "tckd", "nckd"}``."""
    alpha, beta = check_nonneg_weight("alpha", alpha), check_nonneg_weight("beta", beta)
    tckd, nckd = dkd_terms(student, teacher, target, check_temperature(temperature))
    tckd, nckd = tckd.mean(), nckd.mean()
    return {"loss": alpha * tckd + beta * nckd, "tckd": tckd, "nckd": nckd}


def binary_dkd_terms(student: Tensor, teacher: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Mean ``(T^2 TCKD, T^2 NCKD)`` over independent binary logits of any shape: each as the
    two-class logits ``[0, z]`` with class 1 as the target (the label does not matter, see
    the module docstring)."""
    s, t = student.reshape(-1), teacher.reshape(-1)
    tckd, nckd = dkd_terms(
        torch.stack([torch.zeros_like(s), s], dim=1),
        torch.stack([torch.zeros_like(t), t], dim=1),
        torch.ones(s.shape[0], dtype=torch.long, device=s.device),
        temperature,
    )
    return tckd.mean(), nckd.mean()


def space(trial) -> dict:
    alpha = suggest_alpha(trial)
    return {"alpha": alpha, "temperature": suggest_temperature(trial)}


def dkd_multitask_kd(
    s_mlct: Tensor,
    s_mcct: Tensor,
    t_mlct: Tensor,
    t_mcct: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float | None = None,
    gamma: float | None = None,
    hs_student: Sequence[Tensor] | None = None,
    hs_teacher: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """DKD on every binary logit of both heads: ``loss = alpha * (tckd_mlct + tckd_mcct) +
    beta * (nckd_mlct + nckd_mcct)``, the NCKD terms 0 (module docstring). Returns
    ``{"loss", "tckd_mlct", "tckd_mcct", "nckd_mlct", "nckd_mcct"}``."""
    refuse_unused("'dkd' compares logits only", gamma=gamma, hs_student=hs_student,
                  hs_teacher=hs_teacher)  # fmt: skip
    if temperature is None:
        raise LossError("'dkd' needs temperature, the softmax temperature T > 0, got None")
    alpha, beta = check_nonneg_weight("alpha", alpha), check_nonneg_weight("beta", beta)
    temperature = check_temperature(temperature)
    s, t = check_heads(s_mlct, s_mcct, t_mlct, t_mcct)
    tckd_mlct, nckd_mlct = binary_dkd_terms(s_mlct, t_mlct, temperature)
    tckd_mcct, nckd_mcct = binary_dkd_terms(s, t, temperature)
    loss = alpha * (tckd_mlct + tckd_mcct) + beta * (nckd_mlct + nckd_mcct)
    return {
        "loss": loss,
        "tckd_mlct": tckd_mlct,
        "tckd_mcct": tckd_mcct,
        "nckd_mlct": nckd_mlct,
        "nckd_mcct": nckd_mcct,
    }


def dkd_binary_kd(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    alpha: float | None = None,
    temperature: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    hs_student: Sequence[Tensor] | None = None,
    hs_teacher: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """DKD as the whole loss of a one-logit classifier: ``loss = ce + alpha * tckd``, ``ce``
    the BCE of the logit against the 0/1 ``target``, ``tckd`` the batch mean of ``T^2`` TCKD
    with the label as the target class (module docstring: NCKD = 0, beta unused). Returns
    ``{"loss", "ce", "tckd"}``."""
    refuse_unused("'dkd' on one logit has NCKD = 0 (nothing for beta to weigh) and compares "
                  "logits only", beta=beta, gamma=gamma, hs_student=hs_student,
                  hs_teacher=hs_teacher)  # fmt: skip
    if alpha is None or temperature is None:
        raise LossError(
            f"'dkd' needs alpha and temperature, got alpha={alpha!r}, temperature={temperature!r}"
        )
    alpha, temperature = check_nonneg_weight("alpha", alpha), check_temperature(temperature)
    s, t = binary_logits("student", student), binary_logits("teacher", teacher)
    check_same_shape("student", s, "teacher", t)
    y = binary_logits("target", target)
    check_same_shape("student", s, "target", y)
    as_classes = (
        torch.stack([torch.zeros_like(s), s], dim=1),
        torch.stack([torch.zeros_like(t), t], dim=1),
    )
    tckd, _ = dkd_terms(*as_classes, (y > 0.5).long(), temperature)  # NCKD: zeros (one class)
    tckd = tckd.mean()
    ce = F.binary_cross_entropy_with_logits(s.float(), y.float())
    return {"loss": ce + alpha * tckd, "ce": ce, "tckd": tckd}


register_kd(
    "dkd",
    label="DKD",
    mtl=Variant(dkd_multitask_kd, params=("alpha", "beta", "temperature"), space=space),
    binary=Variant(dkd_binary_kd, params=("alpha", "temperature"), space=space),
)
