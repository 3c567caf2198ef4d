"""``last_block``: logit MSE + the MSE between the last blocks' tokens (MLCAK paper, Table 2).

``loss = alpha * MSE(MLCT logits) + beta * MSE(MCCT logits) + gamma * MSE(H_N^T, H_N^S)``.
Searched: alpha, beta, gamma.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cxrkd.trainables.kd import Blocks, Variant, register_kd
from cxrkd.trainables.kd._space import feature_space
from cxrkd.trainables.losses import block_list, feature_kd, feature_mse


def last_block(blocks: Sequence[Tensor]) -> list[Tensor]:
    return [blocks[-1]]


LAST = Blocks("last", last_block)


def last_block_loss(hs_student: Sequence[Tensor], hs_teacher: Sequence[Tensor]) -> Tensor:
    """``MSE(H_N^T, H_N^S)``: the last block of each model only."""
    return feature_mse(
        block_list("hs_student", hs_student)[-1], block_list("hs_teacher", hs_teacher)[-1]
    )


last_block_kd = feature_kd("last_block", last_block_loss)
register_kd(
    "last_block",
    label="Last block",
    blocks=LAST,
    order=1,
    in_paper=True,
    mtl=Variant(last_block_kd, params=("alpha", "beta", "gamma"), space=feature_space),
)
