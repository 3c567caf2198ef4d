"""The Task contract (DESIGN.md): what one shared training loop trains, for every method.

``task(x, y, **extras)`` returns ``{"loss": scalar, "output": ..., **components}`` where
components are detached scalar loss terms (``ce``, ``kd``, ``feat``, ...) for logging.
``output`` is what evaluation scores: logits ``(B,)`` for binary datasets, logits ``(B, C)``
for multi-class datasets (one per class, in the order of the store's labels; evaluation takes
their softmax), or ``{"mlct": (B, F), "mcct": (B,)}`` for multi-label datasets. ``extras`` are
per-sample arrays the task asked for through :meth:`Task.side_arrays` (e.g. cached teacher
logits), gathered with the batch by the loop, which never needs to know what they are.

Normalisation belongs to the models: ``normalization`` is the deployed model's grey
``(mean, std)`` (``trainables.models.model_normalization``), ``teacher_normalization`` a
frozen teacher's own, when there is one. :meth:`Task.make_pipeline` builds the views with
both, so the student and its teacher each see the input they were pretrained on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrkd.trainables.data.augment import Augment, Pipeline


class Task(nn.Module):
    """Base class. ``model`` is the deployed network (parameters, latency, export)."""

    #: the student sees a low-resolution view of this side (px), or None for the plain view
    low_res: int | None = None

    #: the frozen teacher's grey ``(mean, std)``; None when no teacher sees the views
    teacher_normalization: tuple[float, float] | None = None

    def __init__(self, model: nn.Module, *, normalization: tuple[float, float]) -> None:
        super().__init__()
        self.model = model
        self.normalization = tuple(normalization)

    def make_pipeline(self, *, input_size: int, augment: Augment | None = None) -> Pipeline:
        """The views this task trains and is evaluated on: its model's normalisation, the
        low-resolution view when ``low_res`` is set, the teacher's view when it has one."""
        mean, std = self.normalization
        return Pipeline(
            input_size=input_size,
            augment=augment,
            low=self.low_res,
            mean=mean,
            std=std,
            teacher_norm=self.teacher_normalization,
        )

    def side_arrays(self, split: str) -> dict[str, np.ndarray]:
        """Per-sample arrays (first axis = sample) to gather with each batch of ``split``."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def predict(self, x: torch.Tensor):
        """Deployed-model output for evaluation (no teacher, no loss)."""
        return self.model(x)

    def train(self, mode: bool = True) -> Task:
        """Train mode for the trained parts only: frozen parts (teachers) stay in eval."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return []


def squeeze_logit(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 1)`` -> ``(B,)``: binary models have one output logit."""
    return logits.reshape(logits.shape[0])


def class_logits(logits: torch.Tensor, *, multiclass: bool) -> torch.Tensor:
    """A one-head classifier's output under the contract: ``(B, C)`` as is for a multi-class
    task, ``(B, 1)`` -> ``(B,)`` for a binary one."""
    return logits if multiclass else squeeze_logit(logits)


def teacher_view(views: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's input: the high-resolution view in the teacher's own normalisation."""
    if "teacher" not in views:
        raise ValueError(
            f"the views {sorted(views)} have no 'teacher' view; build them with "
            "task.make_pipeline(...), which adds it in the teacher's normalisation"
        )
    return views["teacher"]
