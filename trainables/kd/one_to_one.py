"""``one_to_one``: logit MSE + block i of the student mimics block i of the teacher (MLCAK
paper, Table 2).

``loss = alpha * MSE(MLCT logits) + beta * MSE(MCCT logits) + gamma * (1/N) sum_i
MSE(H_i^T, H_i^S)``. Both models need the same depth; the teacher runs online (caching N
blocks of tokens per image is too large). Searched: alpha, beta, gamma.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cxrkd.trainables.kd import Blocks, Variant, register_kd
from cxrkd.trainables.kd._space import feature_space
from cxrkd.trainables.losses import LossError, block_list, feature_kd, feature_mse

EVERY = Blocks("all", list, every_block=True)


def one_to_one_loss(hs_student: Sequence[Tensor], hs_teacher: Sequence[Tensor]) -> Tensor:
    """``(1/N) sum_i MSE(H_i^T, H_i^S)``: block i of the student mimics block i of the teacher.

    The block counts must be equal; we do not remap blocks, because any remapping is a
    different method from the paper's 1:1 transfer.
    """
    hs_s, hs_t = block_list("hs_student", hs_student), block_list("hs_teacher", hs_teacher)
    if len(hs_s) != len(hs_t):
        raise LossError(
            f"one_to_one needs equal block counts, got student {len(hs_s)} vs teacher {len(hs_t)};"
            " pick models of equal depth, or use 'mlcak' / 'last_block'"
        )
    return torch.stack([feature_mse(s, t) for s, t in zip(hs_s, hs_t, strict=True)]).mean()


one_to_one_kd = feature_kd("one_to_one", one_to_one_loss)
register_kd(
    "one_to_one",
    label="One-to-one blocks",
    blocks=EVERY,
    order=2,
    in_paper=True,
    mtl=Variant(one_to_one_kd, params=("alpha", "beta", "gamma"), space=feature_space),
)
