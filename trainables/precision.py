"""Numerics of a trial: where bf16 autocast runs, and why logits never come out in bf16.

Policy: the body of every network runs under bf16 autocast on CUDA (the speed of training and
evaluation), and the final classifier layer runs outside it, in float32 (:func:`fp32_head`).
bf16 keeps 8 significant bits: logits near 5 are rounded to steps of 1/32, near 64 to steps of
1/2, so a bf16 head makes many images tie, and ties move AUROC (a tied positive/negative pair
counts 1/2 instead of 0 or 1). The head is one small matrix product (ResNet-50: 2,048 x 1
per image), so computing it in fp32 costs nothing measurable; features still come from bf16.

On the CPU autocast is off by default (CPU bf16 is slower than fp32 for these models);
``enabled=True`` turns it on there too, which is how the tests stand in for a GPU.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

AMP_DTYPE = torch.bfloat16
# Device types that run under autocast by default. Read at call time: a test adds "cpu" to run
# whole trials under CPU bf16, the stand-in for a GPU.
AMP_DEVICES = ("cuda",)


def amp_enabled(device: torch.device | str, enabled: bool | None = None) -> bool:
    """Whether a forward on ``device`` runs under autocast: ``enabled`` when given, else
    whether the device type is in :data:`AMP_DEVICES`. The loop, evaluation and the teacher
    caches all ask this one function, so a cached teacher output is computed under the same
    precision as the online teacher."""
    return torch.device(device).type in AMP_DEVICES if enabled is None else bool(enabled)


def autocast(
    device: torch.device | str, *, enabled: bool | None = None, dtype: torch.dtype = AMP_DTYPE
):
    """``torch.autocast`` to ``dtype`` when :func:`amp_enabled`, else a no-op context."""
    device = torch.device(device)
    if not amp_enabled(device, enabled):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_tag(device: torch.device | str, enabled: bool | None = None) -> str:
    """``"bf16"`` under autocast, ``""`` in plain fp32: part of a teacher-output cache key, so
    outputs computed under one precision are never read back under the other."""
    return "bf16" if amp_enabled(device, enabled) else ""


def fp32_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as float32 logits: ``forward_features`` under the caller's autocast, then
    ``forward_head`` (pooling + classifier, timm's split) in float32 outside it.

    Equals ``model(x)`` in fp32; under autocast only the features are bf16. A model without
    timm's split runs entirely in fp32 (correct, only slower).
    """
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        features = model.forward_features(x)
        with torch.autocast(x.device.type, enabled=False):
            return model.forward_head(features.float())
    with torch.autocast(x.device.type, enabled=False):
        return model(x.float())
