"""Plain supervised classification, shared by cnn_baseline and transfer: one logit with BCE on
a binary dataset, ``C`` logits with cross-entropy (softmax) on a multi-class one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrkd.trainables.data.pipeline import DatasetInfo
from cxrkd.trainables.precision import fp32_head
from cxrkd.trainables.task import Task, class_logits


class ClassifierTask(Task):
    """``normalization``: the model's grey ``(mean, std)`` (``model_normalization(name)``).
    The head runs in fp32 also under autocast (``fp32_head``): the logits are never bf16.
    ``model`` has ``info.num_outputs`` logits."""

    def __init__(
        self, model: nn.Module, info: DatasetInfo, *, normalization: tuple[float, float]
    ) -> None:
        super().__init__(model, normalization=normalization)
        self.target_col = info.label_columns()[1]
        self.multiclass = info.task == "multiclass"

    def forward(self, views: dict, y: torch.Tensor) -> dict:
        logits = self.predict(views)
        if self.multiclass:  # one-hot label rows -> class indices
            ce = F.cross_entropy(logits, y.argmax(dim=1))
        else:
            ce = F.binary_cross_entropy_with_logits(logits, y[:, self.target_col])
        return {"loss": ce, "output": logits, "ce": ce.detach()}

    def predict(self, views: dict) -> torch.Tensor:
        return class_logits(fp32_head(self.model, views["hr"]), multiclass=self.multiclass)
