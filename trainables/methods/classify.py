"""Plain supervised binary classification: one logit, BCE. Shared by cnn_baseline, transfer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data.pipeline import DatasetInfo
from trainables.task import Task, squeeze_logit


class ClassifierTask(Task):
    def __init__(self, model: nn.Module, info: DatasetInfo) -> None:
        super().__init__(model)
        self.target_col = info.label_columns()[1]

    def forward(self, views: dict, y: torch.Tensor) -> dict:
        logits = squeeze_logit(self.model(views["hr"]))
        ce = F.binary_cross_entropy_with_logits(logits.float(), y[:, self.target_col])
        return {"loss": ce, "output": logits, "ce": ce.detach()}

    def predict(self, views: dict) -> torch.Tensor:
        return squeeze_logit(self.model(views["hr"]))
