"""Loss functions of both seed papers and the primitives the KD losses share, as pure functions.

- Pneumonia KD (seeds/000): Hinton distillation, ``hinton_kd``.
- MLCAK (seeds/002): a multi-task ViT with MLCT (multi-label findings, logits ``(B, F)``) and
  MCCT (normal/abnormal, ONE logit per image) heads; ``multitask_bce`` is the classification
  loss. The distillation losses (the paper's four approaches of Table 2, and others) are one
  module each in :mod:`trainables.kd`, built from the pieces here (``bernoulli_kl``,
  ``logit_mse``, ``feature_mse``, ``feature_kd``, the ``check_*`` validators). The student's
  joint loss (paper eq. 3) is
  ``multitask_bce(...)["loss"] + get_kd(name).on("mtl").compute(...)["loss"]``.

Contract
--------
A *criterion* (every function in ``LOSSES``) returns ``{"loss": total, **components}``.
``loss`` is the differentiable scalar to backpropagate. Each component is the UNWEIGHTED scalar
term named in the docstring, so ``loss`` is rebuilt exactly from the components and the weights;
components share ``loss``'s graph (detach them before logging). Component names never collide
between ``multitask_bce`` and the KD criteria, so a Task can merge the two dicts.
The building blocks (``logit_mse``, ``feature_mse`` and each KD module's feature term) return a
scalar tensor.

Conventions
-----------
- Binary outputs are ONE logit ``z`` per image, shape ``(B,)`` or ``(B, 1)``, trained with
  BCE-with-logits. Their two-class softmax at temperature ``T`` is the softmax of the logits
  ``[0, z]``: ``[1 - sigmoid(z/T), sigmoid(z/T)]``, so binary KD is the Bernoulli KL.
- Teacher tensors are constants: every function detaches them, so no gradient reaches a
  teacher even when the caller forgot ``torch.no_grad()``.
- Everything is computed in float32 (stable under bf16/fp16 autocast) and reduced to a mean.
- Bad weights, temperatures and shapes raise ``LossError`` (a ``ValueError``) naming the value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

from cxrkd.trainables.errors import CxrkdError


class LossError(CxrkdError, ValueError):
    """A loss got a bad weight, temperature or tensor shape."""


# ---------------------------------------------------------------------------- validation


def check_real(name: str, value: object) -> float:
    # bool is an int subclass; alpha=True is a bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LossError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise LossError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_unit_weight(name: str, value: object) -> float:
    v = check_real(name, value)
    if not 0.0 <= v <= 1.0:
        raise LossError(f"{name} must be in [0, 1], got {value!r}; set it between 0 and 1")
    return v


def check_nonneg_weight(name: str, value: object) -> float:
    v = check_real(name, value)
    if v < 0.0:
        raise LossError(f"{name} must be >= 0, got {value!r}; a negative weight rewards error")
    return v


def check_temperature(value: object) -> float:
    v = check_real("temperature", value)
    if v <= 0.0:
        raise LossError(f"temperature must be > 0, got {value!r}; T=1 is the plain softmax")
    return v


def binary_logits(name: str, z: Tensor) -> Tensor:
    """(B,) or (B, 1) -> (B,); anything else is an error (no silent broadcasting)."""
    if z.ndim == 1 or (z.ndim == 2 and z.shape[1] == 1):
        return z.reshape(-1)
    raise LossError(f"{name} must be one logit per image, shape (B,) or (B, 1), got {shape_of(z)}")


def check_same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor, hint: str = "") -> None:
    if a.shape != b.shape:
        raise LossError(f"{a_name} {shape_of(a)} and {b_name} {shape_of(b)} differ in shape{hint}")


def check_heads(s_mlct: Tensor, s_mcct: Tensor, t_mlct: Tensor, t_mcct: Tensor):
    """Both heads' student and teacher logits of one shape; returns the MCCT logits as
    ``binary_logits`` (one per image)."""
    check_same_shape("s_mlct", s_mlct, "t_mlct", t_mlct)
    s, t = binary_logits("s_mcct", s_mcct), binary_logits("t_mcct", t_mcct)
    check_same_shape("s_mcct", s, "t_mcct", t)
    return s, t


def refuse_unused(reason: str, **values: object) -> None:
    """Refuse (LossError) each keyword given a value that a loss does not read: every KD loss
    takes the same keywords (``trainables.kd``), so the unused ones must stay None."""
    for name, value in values.items():
        if value is not None:
            raise LossError(f"{reason}, so {name} must be None, got {value!r}")


def shape_of(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


# ---------------------------------------------------------------------------- KD terms


def bernoulli_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Elementwise KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))), via logsigmoid for stability."""
    s = student.float() / temperature
    t = teacher.detach().float() / temperature
    p_t = torch.sigmoid(t)
    return p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1.0 - p_t) * (
        F.logsigmoid(-t) - F.logsigmoid(-s)
    )


def softmax_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Per-row KL(softmax(t/T) || softmax(s/T)), shape (B,)."""
    log_p_s = F.log_softmax(student.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher.detach().float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def hinton_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    alpha: float,
    temperature: float,
) -> dict[str, Tensor]:
    """Hinton distillation (pneumonia paper): ``loss = alpha * ce + (1 - alpha) * kd``.

    - ``ce`` = hard-label loss, batch mean: cross-entropy for K-class logits ``(B, K)`` with
      integer targets ``(B,)``; BCE-with-logits for one logit per image ``(B,)``/``(B, 1)``
      with 0/1 (or soft) targets of the same length.
    - ``kd`` = ``T^2 * (1/B) * sum_b KL(softmax(t_b/T) || softmax(s_b/T))`` ("batchmean"); for a
      single logit the softmax is over ``[0, z]``. The ``T^2`` keeps the gradient scale of the
      soft term independent of ``T`` (Hinton et al. 2015): ``d kd / d s = T (p_s - p_t) / B``.

    ``alpha`` in [0, 1] weights the hard-label term (``alpha=1``: plain training; the paper's
    "Total Loss = (1 - alpha) KL + alpha CE"). Returns ``{"loss", "ce", "kd"}``.
    """
    alpha = check_unit_weight("alpha", alpha)
    temperature = check_temperature(temperature)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if student_logits.ndim == 2 and student_logits.shape[1] >= 2:
        if target.shape != student_logits.shape[:1]:
            raise LossError(
                f"target {shape_of(target)} must be class indices of shape "
                f"({student_logits.shape[0]},) for logits {shape_of(student_logits)}"
            )
        if target.is_floating_point():
            raise LossError(f"K-class targets must be integer class indices, got {target.dtype}")
        ce = F.cross_entropy(student_logits.float(), target)
        kd = softmax_kl(student_logits, teacher_logits, temperature).mean()
    else:
        s = binary_logits("student_logits", student_logits)
        t = binary_logits("teacher_logits", teacher_logits)
        if target.shape not in (s.shape, (s.shape[0], 1)):
            raise LossError(f"target {shape_of(target)} must have shape ({s.shape[0]},) or (B, 1)")
        ce = F.binary_cross_entropy_with_logits(s.float(), target.reshape(-1).float())
        kd = bernoulli_kl(s, t, temperature).mean()
    kd = kd * temperature**2
    return {"loss": alpha * ce + (1.0 - alpha) * kd, "ce": ce, "kd": kd}


# ---------------------------------------------------------------------------- MLCAK (002)


def multitask_bce(
    mlct_logits: Tensor, mcct_logits: Tensor, findings_target: Tensor, global_target: Tensor
) -> dict[str, Tensor]:
    """Classification loss of the multi-task model: ``loss = bce_mlct + bce_mcct``.

    ``bce_mlct`` = BCE-with-logits of the findings logits ``(B, F)`` against 0/1 findings
    ``(B, F)``, mean over all ``B*F`` elements; ``bce_mcct`` = BCE-with-logits of the one
    normal/abnormal logit per image against the global label, mean over ``B``.
    Returns ``{"loss", "bce_mlct", "bce_mcct"}``.
    """
    check_same_shape("mlct_logits", mlct_logits, "findings_target", findings_target)
    z = binary_logits("mcct_logits", mcct_logits)
    y = binary_logits("global_target", global_target)
    check_same_shape("mcct_logits", z, "global_target", y)
    bce_mlct = F.binary_cross_entropy_with_logits(mlct_logits.float(), findings_target.float())
    bce_mcct = F.binary_cross_entropy_with_logits(z.float(), y.float())
    return {"loss": bce_mlct + bce_mcct, "bce_mlct": bce_mlct, "bce_mcct": bce_mcct}


def logit_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean((t - s)^2)`` over all elements (paper eq. 2); shapes must be equal."""
    check_same_shape("student logits", student, "teacher logits", teacher)
    return (student.float() - teacher.detach().float()).pow(2).mean()


def feature_mse(h_student: Tensor, h_teacher: Tensor) -> Tensor:
    """``mean((H^T - H^S)^2)``; the student features must already match the teacher's shape."""
    check_same_shape(
        "student features",
        h_student,
        "teacher features",
        h_teacher,
        "; project the student to the teacher's width and pool it to the teacher's token "
        "count before the loss (the model-side projection does this)",
    )
    return (h_student.float() - h_teacher.detach().float()).pow(2).mean()


def block_list(name: str, hs: Sequence[Tensor] | None) -> Sequence[Tensor]:
    """``hs`` itself, refused (LossError) when None or empty."""
    if hs is None or len(hs) == 0:
        raise LossError(f"{name} must be a non-empty list of per-block hidden states, got {hs!r}")
    return hs


def feature_kd(approach: str, feature_term: Callable[..., Tensor]) -> Callable[..., dict]:
    """Build the criterion ``alpha * kd_mlct + beta * kd_mcct + gamma * feature_term``: the
    MLCAK paper's eq. 3, shared by every feature approach (they differ in the feature term and
    in the blocks they compare, see :class:`trainables.kd.Blocks`)."""

    def criterion(
        s_mlct: Tensor,
        s_mcct: Tensor,
        t_mlct: Tensor,
        t_mcct: Tensor,
        *,
        alpha: float,
        beta: float,
        gamma: float | None = None,
        temperature: float | None = None,
        hs_student: Sequence[Tensor] | None = None,
        hs_teacher: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        if temperature is not None:
            raise LossError(
                f"{approach!r} compares raw logits with MSE (paper eq. 3) and takes no "
                f"temperature, got temperature={temperature!r}; pass None"
            )
        if gamma is None:
            raise LossError(f"{approach!r} needs gamma, the weight of its feature term, got None")
        alpha, beta = check_nonneg_weight("alpha", alpha), check_nonneg_weight("beta", beta)
        gamma = check_nonneg_weight("gamma", gamma)
        kd_mlct = logit_mse(s_mlct, t_mlct)
        kd_mcct = logit_mse(binary_logits("s_mcct", s_mcct), binary_logits("t_mcct", t_mcct))
        feat = feature_term(
            block_list("hs_student", hs_student), block_list("hs_teacher", hs_teacher)
        )
        loss = alpha * kd_mlct + beta * kd_mcct + gamma * feat
        return {"loss": loss, "kd_mlct": kd_mlct, "kd_mcct": kd_mcct, "feat": feat}

    # Bound as ``{approach}_kd`` in the module of its feature term (trainables/kd/<approach>.py),
    # which is where pickle looks it up.
    criterion.__name__ = criterion.__qualname__ = f"{approach}_kd"
    criterion.__module__ = feature_term.__module__
    criterion.__doc__ = f"""``loss = alpha * kd_mlct + beta * kd_mcct + gamma * feat`` (eq. 3).

    ``kd_mlct``/``kd_mcct`` = MSE between the student's and the teacher's raw logits of each
    head (no temperature: leave it None); ``feat = {feature_term.__name__}(hs_student,
    hs_teacher)``. ``alpha, beta, gamma >= 0``; ``gamma`` and the hidden states (lists of
    per-block outputs, the student's already projected to the teacher's shape) are required.
    Returns ``{{"loss", "kd_mlct", "kd_mcct", "feat"}}``.
    """
    return criterion


LOSSES = MappingProxyType({"hinton_kd": hinton_kd, "multitask_bce": multitask_bce})
