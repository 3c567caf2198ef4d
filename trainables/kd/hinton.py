"""``hinton``: Hinton KD of one logit per image (Hinton et al. 2015; the pneumonia paper's
ResNet-50 -> ResNet-18 distillation, seeds/000 section 3.3.3): ``kd_logit``'s default.

``loss = alpha * CE(y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``, the softmax
over ``[0, z]`` (:func:`trainables.losses.hinton_kd`, called as is: ``kd_logit`` computes
exactly what it computed before the KD-loss registry, so ``pneumonia-kd``'s numbers stay).
Reads the student's and the teacher's logits and the label; no features, so the teacher's
logits are cached when augmentation is off. Components: ``ce``, ``kd`` (unweighted).

On a multi-class dataset ``kd_logit`` passes ``(B, C)`` logits and class-index targets, and
:func:`trainables.losses.hinton_kd` computes Hinton's original form: cross-entropy, and the
``T^2``-scaled KL of the softmaxes over the C classes (the only loss of this layout that takes
C logits; ``kd_logit.MULTICLASS_APPROACHES``).

``alpha`` in [0, 1] weighs the hard-label term (the paper's "Total Loss = (1 - alpha) KL +
alpha CE"); defaults alpha = 0.5, T = 4 (kd_logit's before the registry). Searched (the
``kd_logit`` space before the registry, unchanged): alpha uniform in [0, 1], temperature
log-uniform in [1, 20].
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cxrkd.trainables.kd import Variant, register_kd
from cxrkd.trainables.kd._space import suggest_temperature
from cxrkd.trainables.losses import LossError, hinton_kd, refuse_unused


def space(trial) -> dict:
    alpha = trial.suggest_float("alpha", 0.0, 1.0)
    return {"alpha": alpha, "temperature": suggest_temperature(trial)}


def hinton_binary_kd(
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
    """:func:`trainables.losses.hinton_kd` (``{"loss", "ce", "kd"}``) under the binary KD
    contract (``trainables.kd``)."""
    refuse_unused("'hinton' has one weight, alpha, and no feature term", beta=beta,
                  gamma=gamma, hs_student=hs_student, hs_teacher=hs_teacher)  # fmt: skip
    if alpha is None or temperature is None:
        raise LossError(
            f"'hinton' needs alpha and temperature, got alpha={alpha!r}, "
            f"temperature={temperature!r}"
        )
    return hinton_kd(student, teacher, target, alpha=alpha, temperature=temperature)


register_kd(
    "hinton",
    label="Hinton KD",
    order=4,  # after the MLCAK paper's four (0-3), before the losses of the literature
    binary=Variant(
        hinton_binary_kd,
        params=("alpha", "temperature"),
        space=space,
        defaults={"alpha": 0.5, "temperature": 4.0},
        limits={"alpha": (0.0, 1.0)},
    ),
)
