"""Plain supervised binary classification: one logit, BCE. Shared by cnn_baseline, transfer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrkd.trainables.data.pipeline import DatasetInfo
from cxrkd.trainables.precision import fp32_head
from cxrkd.trainables.task import Task, squeeze_logit


class ClassifierTask(Task):
    """``normalization``: the model's grey ``(mean, std)`` (``model_normalization(name)``).
    The head runs in fp32 also under autocast (``fp32_head``): the logits are never bf16."""

    def __init__(
        self, model: nn.Module, info: DatasetInfo, *, normalization: tuple[float, float]
    ) -> None:
        super().__init__(model, normalization=normalization)
        self.target_col = info.label_columns()[1]

    def forward(self, views: dict, y: torch.Tensor) -> dict:
        logits = squeeze_logit(fp32_head(self.model, views["hr"]))
        ce = F.binary_cross_entropy_with_logits(logits, y[:, self.target_col])
        return {"loss": ce, "output": logits, "ce": ce.detach()}

    def predict(self, views: dict) -> torch.Tensor:
        return squeeze_logit(fp32_head(self.model, views["hr"]))
