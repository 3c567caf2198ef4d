"""The Task contract (DESIGN.md): what one shared training loop trains, for every method.

``task(x, y, **extras)`` returns ``{"loss": scalar, "output": ..., **components}`` where
components are detached scalar loss terms (``ce``, ``kd``, ``feat``, ...) for logging.
``output`` is what evaluation scores: logits ``(B,)`` for binary datasets, or
``{"mlct": (B, F), "mcct": (B,)}`` for multi-label datasets. ``extras`` are per-sample arrays
the task asked for through :meth:`Task.side_arrays` (e.g. cached teacher logits), gathered
with the batch by the loop, which never needs to know what they are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Task(nn.Module):
    """Base class. ``model`` is the deployed network (parameters, latency, export)."""

    #: the student sees a low-resolution view of this side (px), or None for the plain view
    low_res: int | None = None

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

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
