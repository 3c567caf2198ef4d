"""``vanilla``: Hinton KD on both heads' logits (MLCAK paper, Table 2; Hinton et al. 2015).

``loss = alpha * kd_mlct + beta * kd_mcct``, each head's logits softened at temperature T;
no block features. Searched: alpha, beta, temperature (``trainables.kd._space``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cxrkd.trainables.kd import Variant, register_kd
from cxrkd.trainables.kd._space import suggest_alpha, suggest_beta, suggest_temperature
from cxrkd.trainables.losses import (
    bernoulli_kl,
    check_heads,
    check_nonneg_weight,
    check_temperature,
    refuse_unused,
)


def space(trial) -> dict:
    alpha = suggest_alpha(trial)
    beta = suggest_beta(trial)
    return {"alpha": alpha, "beta": beta, "temperature": suggest_temperature(trial)}


def vanilla_multitask_kd(
    s_mlct: Tensor,
    s_mcct: Tensor,
    t_mlct: Tensor,
    t_mcct: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    gamma: float | None = None,
    hs_student: Sequence[Tensor] | None = None,
    hs_teacher: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """Hinton KD on both heads: ``loss = alpha * kd_mlct + beta * kd_mcct``.

    ``kd_mlct = T^2 * mean_{b,f} KL(Bern(sigmoid(t_bf/T)) || Bern(sigmoid(s_bf/T)))`` (each
    finding is its own binary problem); ``kd_mcct`` is the same for the one MCCT logit, i.e.
    the two-class softmax KD over ``[0, z]``. ``gamma``/hidden states belong to the feature
    approaches and must stay None here (they exist so every registered KD loss takes the
    same keywords). Returns ``{"loss", "kd_mlct", "kd_mcct"}``.
    """
    refuse_unused("'vanilla' KD has no feature term", gamma=gamma, hs_student=hs_student,
                  hs_teacher=hs_teacher)  # fmt: skip
    alpha, beta = check_nonneg_weight("alpha", alpha), check_nonneg_weight("beta", beta)
    temperature = check_temperature(temperature)
    s, t = check_heads(s_mlct, s_mcct, t_mlct, t_mcct)
    kd_mlct = bernoulli_kl(s_mlct, t_mlct, temperature).mean() * temperature**2
    kd_mcct = bernoulli_kl(s, t, temperature).mean() * temperature**2
    return {"loss": alpha * kd_mlct + beta * kd_mcct, "kd_mlct": kd_mlct, "kd_mcct": kd_mcct}


register_kd(
    "vanilla",
    label="Vanilla KD",
    order=0,
    in_paper=True,
    mtl=Variant(vanilla_multitask_kd, params=("alpha", "beta", "temperature"), space=space),
)
