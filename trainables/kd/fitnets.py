"""``fitnets``: FitNets hint learning (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep
Nets"), in its single-stage form, on both layouts: ``kd_vit``'s ViTs (``mtl``) and
``kd_logit``'s CNNs (``binary``, the ResNet-50 -> ResNet-18 pair).

FitNets trains the student's middle ("guided") layer to predict the teacher's middle ("hint")
layer through a learned regressor ``r``: ``L_HT = 1/2 ||u_h - r(v_g)||^2``. Here:

- hint and guided layer: the output of the block (ViT) or stage (CNN,
  ``trainables.features.stage_names``: ``layer1..layer4`` of a ResNet) at half depth of each
  model, ``ceil(N/2)`` of N (index ``(N + 1) // 2 - 1``, ``trainables.features.middle_index``:
  block 6 of 12, ``layer2`` of a ResNet), picked for the teacher and the student separately,
  so their depths may differ;
- regressor: the Task's learned projection, trained with the student and never deployed:
  :class:`trainables.vit.FeatureAdapter` for ViT tokens (pools the larger patch grid to the
  smaller, a linear map of the widths), :class:`trainables.features.FeatureProjection` for
  CNN maps (a 1x1 convolution to the teacher's channels, the larger map average-pooled to
  the smaller size; ResNet-18's layer2 has 128 channels, ResNet-50's 512). At equal widths it
  has no weights (pooling only), as for every feature approach here;
- ``hint = MSE(H_mid^T, r(H_mid^S))`` as a mean over elements (the paper's 1/2 and sum are a
  constant factor, absorbed by ``gamma``).

Single stage, as torchdistill's and mdistiller's FitNets recipes run it: the hint term is
added to the training loss from the first step. NOT reproduced: the paper's two stages (hint
pre-training of the student's lower half, then Hinton KD of the whole student with an
annealed soft-target weight), and its convolutional regressor sized to match the maps
without pooling.

**mtl**: the logit terms are those of the other feature approaches (MSE of each head's logits,
MLCAK eq. 3), so ``fitnets`` differs from ``last_block``/``mlcak`` only in the blocks it
compares: ``loss = alpha * MSE(MLCT logits) + beta * MSE(MCCT logits) + gamma * hint`` (the
Task adds the heads' BCE). Searched: alpha, beta, gamma with the feature approaches' ranges
(``trainables.kd._space``). Components ``kd_mlct``, ``kd_mcct``, ``feat``.

**binary**: mdistiller's single-stage FitNet loss, ``loss = CE(y) + gamma * hint``: the
student's BCE on the label and the hint, no soft-target term (the paper's stage 2 KD is
``hinton``'s; combining both is a third method). Reads the student's logit, the label and
the middle stages of both models (the teacher's logit is not read, so the teacher runs
online with its stages tapped: ``kd_logit`` caches no CNN maps). The regressor is a plain
1x1 convolution (mdistiller's ``ConvReg`` adds batch norm and a ReLU; not reproduced).
Searched: gamma log-uniform in [1e-2, 1e2]: the stage outputs are unnormalised post-ReLU
maps whose MSE scale depends on the models and their pretraining, so the weight spans four
decades, up to mdistiller's CIFAR default of 100 (log-uniform like every gamma).
Components ``ce``, ``feat``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from cxrkd.trainables.features import middle_index
from cxrkd.trainables.kd import Blocks, Variant, register_kd
from cxrkd.trainables.kd._space import feature_space
from cxrkd.trainables.losses import (
    LossError,
    binary_logits,
    block_list,
    check_nonneg_weight,
    check_same_shape,
    feature_kd,
    feature_mse,
    refuse_unused,
)


def middle_block(blocks: Sequence[Tensor]) -> list[Tensor]:
    """The block (or stage) at half depth: index ``(N + 1) // 2 - 1`` of N."""
    return [blocks[middle_index(len(blocks))]]


MIDDLE = Blocks("middle", middle_block)


def hint_loss(hs_student: Sequence[Tensor], hs_teacher: Sequence[Tensor]) -> Tensor:
    """``MSE(hint, guided)``: ONE teacher block (the hint) against ONE student block (the
    guided layer, already through the regressor)."""
    hs_s, hs_t = block_list("hs_student", hs_student), block_list("hs_teacher", hs_teacher)
    if len(hs_s) != 1 or len(hs_t) != 1:
        raise LossError(
            f"fitnets compares one guided block with one hint block, got student {len(hs_s)} "
            f"and teacher {len(hs_t)} blocks; pass each model's middle block "
            "(trainables.kd.fitnets.middle_block)"
        )
    return feature_mse(hs_s[0], hs_t[0])


fitnets_kd = feature_kd("fitnets", hint_loss)


def binary_space(trial) -> dict:
    return {"gamma": trial.suggest_float("gamma", 1e-2, 1e2, log=True)}


def fitnets_binary_kd(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    gamma: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    temperature: float | None = None,
    hs_student: Sequence[Tensor] | None = None,
    hs_teacher: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """``loss = ce + gamma * feat``: ``ce`` the BCE of the student's logit against the 0/1
    ``target``, ``feat`` :func:`hint_loss` of the guided stage (``hs_student``, through the
    projection) and the hint stage (``hs_teacher``). ``teacher`` (its logit) is not read.
    Returns ``{"loss", "ce", "feat"}``."""
    refuse_unused("'fitnets' on one logit weighs only its hint (gamma), with no soft-target "
                  "term", alpha=alpha, beta=beta, temperature=temperature)  # fmt: skip
    if gamma is None:
        raise LossError("'fitnets' needs gamma, the weight of its hint term, got None")
    gamma = check_nonneg_weight("gamma", gamma)
    s, y = binary_logits("student", student), binary_logits("target", target)
    check_same_shape("student", s, "target", y)
    feat = hint_loss(block_list("hs_student", hs_student), block_list("hs_teacher", hs_teacher))
    ce = F.binary_cross_entropy_with_logits(s.float(), y.float())
    return {"loss": ce + gamma * feat, "ce": ce, "feat": feat}


register_kd(
    "fitnets",
    label="FitNets",
    blocks=MIDDLE,
    mtl=Variant(fitnets_kd, params=("alpha", "beta", "gamma"), space=feature_space),
    binary=Variant(fitnets_binary_kd, params=("gamma",), space=binary_space),
)
