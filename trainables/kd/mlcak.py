"""``mlcak``: logit MSE + the MSE of the block means (MLCAK paper, eq. 1-3; its Table 2).

``loss = alpha * MSE(MLCT logits) + beta * MSE(MCCT logits) + gamma * MSE(mean_i H_i^T,
mean_i H_i^S)``; the block counts may differ. Block means commute with the token pooling and
the width adapter, so the Task reduces the blocks first and the teacher's mean is cached.
Searched: alpha, beta, gamma.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cxrkd.trainables.kd import Blocks, Variant, register_kd
from cxrkd.trainables.kd._space import feature_space
from cxrkd.trainables.losses import LossError, block_list, feature_kd, feature_mse


def block_mean(blocks: Sequence[Tensor]) -> Tensor:
    """The mean over blocks in float32 (paper eq. 1), without stacking N copies."""
    total = blocks[0].float()
    for h in blocks[1:]:
        total = total + h.float()
    return total / len(blocks)


def mean_block(blocks: Sequence[Tensor]) -> list[Tensor]:
    return [block_mean(blocks)]


MEAN = Blocks("mean", mean_block)


def _block_mean(name: str, hs: Sequence[Tensor]) -> Tensor:
    shapes = {tuple(h.shape) for h in block_list(name, hs)}
    if len(shapes) != 1:
        raise LossError(f"all blocks of {name} must share one shape, got {sorted(shapes)}")
    return block_mean(hs)


def mlcak_loss(hs_student: Sequence[Tensor], hs_teacher: Sequence[Tensor]) -> Tensor:
    """``MSE(mean_i H_i^T, mean_i H_i^S)`` (paper eq. 1-2); block counts may differ."""
    return feature_mse(_block_mean("hs_student", hs_student), _block_mean("hs_teacher", hs_teacher))


mlcak_kd = feature_kd("mlcak", mlcak_loss)
register_kd(
    "mlcak",
    label="MLCAK (block mean)",
    blocks=MEAN,
    order=3,
    in_paper=True,
    mtl=Variant(mlcak_kd, params=("alpha", "beta", "gamma"), space=feature_space),
)
