"""Intermediate features of any torch/timm model, taken with forward hooks (no model edits),
and the learned projection that puts a student's CNN feature map on its teacher's layout.

- :class:`FeatureTaps`: a context manager tapping named modules (``model.get_submodule``
  names, e.g. ``layer2`` of a ResNet, ``blocks.5`` of a ViT) during the forward passes inside
  it; the hooks are removed on exit, so the model holds no state between calls.
- :func:`stage_names` names a model's stages (timm's ``feature_info`` when the model has it:
  ``layer1..layer4`` of a ResNet, ``blocks.i`` of a ViT); :func:`middle_index` is the one rule
  for "the stage at half depth" (FitNets' hint and guided layers, ``trainables.kd.fitnets``).
- :class:`FeatureProjection`: the FitNets regressor for CNN maps. Trained with the student
  (a sibling of it in the KD Task: its parameters are in the optimiser and in the checkpoint's
  ``state.pt``, like ``trainables.vit.FeatureAdapter``), never part of the exported student.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrkd.trainables.errors import CxrkdError


class FeatureTaps:
    """``with FeatureTaps(model, ["layer2"]) as taps: model(x)`` -> ``taps.outputs()``.

    Each named module's output of the forward pass run inside the block, in the order of
    ``names``. A name that is not a submodule is refused on construction, with close matches.
    A module that runs twice inside one block (a model that reuses it) is an error rather
    than a silent pick of one of its outputs.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model, self.names = model, tuple(names)
        self._modules = [submodule(model, name) for name in self.names]
        self._handles: list = []
        self._outputs: dict[str, Tensor] = {}

    def __enter__(self) -> FeatureTaps:
        self._outputs = {}
        self._handles = [
            module.register_forward_hook(self._keeper(name))
            for name, module in zip(self.names, self._modules, strict=True)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _keeper(self, name: str):
        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise CxrkdError(
                    f"module {name!r} returns {type(output).__name__}, not a tensor; tap a "
                    "module that outputs a feature map or tokens"
                )
            if name in self._outputs:
                raise CxrkdError(
                    f"module {name!r} ran twice in one forward pass; tap a module that "
                    "runs once (a stage, not a shared layer)"
                )
            self._outputs[name] = output

        return keep

    def outputs(self) -> list[Tensor]:
        """The tapped outputs in the order of ``names``; every named module must have run."""
        missing = [name for name in self.names if name not in self._outputs]
        if missing:
            raise CxrkdError(
                f"modules {missing} of {type(self.model).__name__} did not run in the forward "
                "pass inside the taps; tap modules on the path of model(x)"
            )
        return [self._outputs[name] for name in self.names]


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, refused with the close names when there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        known = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        raise CxrkdError(
            f"{type(model).__name__} has no module {name!r}; close names: {close or 'none'} "
            f"(its stages: {stage_names(model) if has_stages(model) else 'unknown'})"
        ) from None


def has_stages(model: nn.Module) -> bool:
    return bool(getattr(model, "feature_info", None)) or isinstance(
        getattr(model, "blocks", None), nn.Sequential
    )


def stage_names(model: nn.Module) -> list[str]:
    """The model's stages, shallow to deep, as ``get_submodule`` names.

    timm's ``feature_info`` where the model has it, without leaf modules: a ResNet lists its
    stem's activation ``act1`` first, which is no stage, so its stages are ``layer1..layer4``;
    a ViT's are ``blocks.0..blocks.N-1``. A model with a ``blocks`` sequence and no
    ``feature_info``: those blocks. Anything else (cxrkd's ``cnn_baseline``) is refused.
    """
    info = getattr(model, "feature_info", None)
    if info:
        names = [entry["module"] for entry in info]
        stages = [n for n in names if any(True for _ in model.get_submodule(n).children())]
        if stages:
            return stages
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks):
        return [f"blocks.{i}" for i in range(len(blocks))]
    raise CxrkdError(
        f"{type(model).__name__} names no stages (no timm feature_info, no blocks), so its "
        "intermediate features cannot be picked; use a timm model (resnet18, resnet50, a ViT) "
        "or a KD loss that compares logits only"
    )


def middle_index(n: int) -> int:
    """The stage at half depth of ``n``: stage ``ceil(n/2)`` counted from 1, i.e. index
    ``(n + 1) // 2 - 1`` (6 of 12 blocks, layer2 of a ResNet's 4 stages, 1 of 2)."""
    if n < 1:
        raise ValueError(f"a model with {n} stages has no middle stage")
    return (n + 1) // 2 - 1


def middle_stage(model: nn.Module) -> str:
    """The name of the model's stage at half depth (:func:`middle_index`)."""
    names = stage_names(model)
    return names[middle_index(len(names))]


def probe_shapes(model: nn.Module, names: Sequence[str], input_size: int) -> list[torch.Size]:
    """The output shape of each named module for one ``input_size`` x ``input_size`` grey
    image: one forward in eval mode without gradients (batch norm statistics untouched), the
    model's train/eval mode restored after."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTaps(model, names) as taps:
            model(torch.zeros(1, 1, input_size, input_size, device=device))
        return [out.shape for out in taps.outputs()]
    finally:
        model.train(was_training)


class FeatureProjection(nn.Module):
    """Puts a student feature map ``(B, Cs, Hs, Ws)`` and a teacher's ``(B, Ct, Ht, Wt)`` on one
    layout ``(B, Ct, h, w)``, ``h = min(Hs, Ht)``, ``w = min(Ws, Wt)``.

    The student's map goes through a learned 1x1 convolution ``Cs -> Ct`` (none when the
    channels are equal); the larger map of each side is adaptive-average-pooled to ``h x w``.
    The convolution and the pooling commute (both are linear, the conv per pixel), so the
    student is pooled first, which is cheaper. FitNets' regressor (Romero et al. 2015) is a
    convolution too; theirs is sized so the maps match without pooling.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        student_size: tuple[int, int],
        teacher_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.student_size, self.teacher_size = tuple(student_size), tuple(teacher_size)
        self.size = tuple(min(s, t) for s, t in zip(student_size, teacher_size, strict=True))
        self.teacher_channels = teacher_channels
        self.proj: nn.Module = (
            nn.Identity()
            if student_channels == teacher_channels
            else nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        )

    @classmethod
    def between(cls, student: torch.Size, teacher: torch.Size) -> FeatureProjection:
        """The projection for maps of these shapes (e.g. from :func:`probe_shapes`)."""
        if len(student) != 4 or len(teacher) != 4:
            raise CxrkdError(
                f"a CNN feature projection takes (B, C, H, W) maps, got student "
                f"{tuple(student)} and teacher {tuple(teacher)}"
            )
        return cls(student[1], teacher[1], tuple(student[2:]), tuple(teacher[2:]))

    def _pool(self, fmap: Tensor, size: tuple[int, ...], who: str) -> Tensor:
        if fmap.ndim != 4 or tuple(fmap.shape[2:]) != size:
            raise ValueError(f"{who} maps must be (B, C, {size[0]}, {size[1]}), got {fmap.shape}")
        return fmap if size == self.size else F.adaptive_avg_pool2d(fmap, self.size)

    def adapt_student(self, fmap: Tensor) -> Tensor:
        return self.proj(self._pool(fmap, self.student_size, "student"))

    def pool_teacher(self, fmap: Tensor) -> Tensor:
        if fmap.shape[1] != self.teacher_channels:
            raise ValueError(f"teacher maps must have {self.teacher_channels} channels")
        return self._pool(fmap, self.teacher_size, "teacher")

    def forward(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """(projected student map, pooled teacher map), both ``(B, Ct, h, w)``."""
        return self.adapt_student(student), self.pool_teacher(teacher)
