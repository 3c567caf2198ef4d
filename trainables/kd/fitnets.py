"""``fitnets``: FitNets hint learning (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep
Nets"), in its single-stage form, on the ViTs of ``kd_vit``.

FitNets trains the student's middle ("guided") layer to predict the teacher's middle ("hint")
layer through a learned regressor ``r``: ``L_HT = 1/2 ||u_h - r(v_g)||^2``. Here:

- hint and guided layer: the output of the block at half depth of each model, block
  ``ceil(N/2)`` of N (index ``(N + 1) // 2 - 1``: 6 of 12, 1 of 2, 2 of 3), picked for the
  teacher and the student separately, so their depths may differ;
- regressor: the Task's learned :class:`trainables.vit.FeatureAdapter` (pools the larger patch
  grid to the smaller, maps the student's width to the teacher's), trained with the student
  and never deployed; at equal widths it has no weights (pooling only), as for every feature
  approach here;
- ``hint = MSE(H_mid^T, r(H_mid^S))`` as a mean over elements (the paper's 1/2 and sum are a
  constant factor, absorbed by ``gamma``).

Single stage, as torchdistill's and mdistiller's FitNets recipes run it: the hint term is
added to the training loss from the first step. The paper's two-stage schedule (hint
pre-training of the student's lower half, then KD of the whole student) is NOT reproduced.
The logit terms are those of the other feature approaches (MSE of each head's logits, MLCAK
eq. 3), so ``fitnets`` differs from ``last_block``/``mlcak`` only in the blocks it compares:
``loss = alpha * MSE(MLCT logits) + beta * MSE(MCCT logits) + gamma * hint``.
Searched: alpha, beta, gamma with the feature approaches' ranges (``trainables.kd._space``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cxrkd.trainables.kd import Blocks, register_kd
from cxrkd.trainables.kd._space import feature_space
from cxrkd.trainables.losses import LossError, block_list, feature_kd, feature_mse


def middle_block(blocks: Sequence[Tensor]) -> list[Tensor]:
    """The block at half depth: index ``(N + 1) // 2 - 1`` of N blocks."""
    return [blocks[(len(blocks) + 1) // 2 - 1]]


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


fitnets_kd = register_kd(
    "fitnets", params=("alpha", "beta", "gamma"), space=feature_space, blocks=MIDDLE
)(feature_kd("fitnets", hint_loss))
