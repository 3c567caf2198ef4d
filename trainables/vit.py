"""Two-headed ViTs for the low-resolution KD study (seed 002) and the feature adapter.

``MultiTaskViT`` wraps an unmodified timm ViT: MLCT (one logit per finding) and MCCT (one
normal/abnormal logit) heads on the pooled class token, and optionally every block's output
H_1..H_N for the MLCAK loss, taken with forward hooks during the single forward pass. The
heads always compute in float32, also under bf16 autocast (see ``trainables.precision``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cxrkd.trainables.weights import create_timm_model


class MultiTaskViT(nn.Module):
    """A timm ViT backbone (``num_classes=0``) plus the MLCT and MCCT heads.

    Attributes: ``width`` (token width), ``depth`` (blocks), ``grid`` (patch-grid side),
    ``num_prefix_tokens`` (1 for the class token of ViT-Tiny/Small/Base).
    """

    def __init__(self, backbone: nn.Module, *, num_findings: int) -> None:
        super().__init__()
        missing = [a for a in ("blocks", "patch_embed", "embed_dim") if not hasattr(backbone, a)]
        if missing:
            raise TypeError(f"{type(backbone).__name__} is not a timm ViT (no {missing})")
        rows, cols = backbone.patch_embed.grid_size
        if rows != cols:
            raise ValueError(f"only square patch grids are supported, got {rows}x{cols}")
        self.backbone = backbone
        self.width: int = backbone.embed_dim
        self.depth: int = len(backbone.blocks)
        self.grid: int = rows
        self.num_prefix_tokens: int = backbone.num_prefix_tokens
        self.mlct_head = nn.Linear(self.width, num_findings)
        self.mcct_head = nn.Linear(self.width, 1)

    def forward(self, x: torch.Tensor, *, return_blocks: bool = False) -> dict[str, Any]:
        """``{"mlct": (B, F), "mcct": (B,)}``, plus ``"blocks"`` when ``return_blocks``.

        ``blocks`` is the list of the N block outputs H_1..H_N, each
        ``(B, num_prefix_tokens + grid**2, width)``: the class token first, then the patch
        tokens row by row; before the final norm, as the blocks emit them. The key is absent
        (not an empty list) when ``return_blocks`` is False, so a caller cannot mistake "not
        asked for" for "no blocks".
        """
        blocks: list[torch.Tensor] = []

        def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            blocks.append(output)

        todo = self.backbone.blocks if return_blocks else []
        handles = [block.register_forward_hook(keep) for block in todo]
        try:
            tokens = self.backbone.forward_features(x)  # after the final norm
        finally:  # hooks live for one call only: the module holds no state between calls
            for handle in handles:
                handle.remove()
        pooled = self.backbone.forward_head(tokens, pre_logits=True)  # class token (+ dropout)
        # The heads in fp32 outside any autocast: bf16 logits tie (trainables.precision).
        with torch.autocast(pooled.device.type, enabled=False):
            pooled = pooled.float()
            out: dict[str, Any] = {
                "mlct": self.mlct_head(pooled),
                "mcct": self.mcct_head(pooled).squeeze(-1),
            }
        if return_blocks:
            out["blocks"] = blocks
        return out


def create_vit(
    name: str,
    *,
    num_findings: int,
    pretrained: bool,
    img_size: int | None = None,
    patch_size: int | None = None,
    depth: int | None = None,
    weights_dir: str | os.PathLike | None = None,
    dropout: float = 0.0,
    **timm_kwargs: Any,
) -> MultiTaskViT:
    """A one-channel timm ViT with MLCT/MCCT heads.

    ``img_size``/``patch_size``/``depth`` override the architecture for CPU-sized demo
    variants (e.g. ``vit_tiny_patch16_224`` at 64 px, 8 px patches, 4 blocks). With
    pretrained weights, timm resamples the position embedding to a new ``img_size`` and the
    patch kernel to a new ``patch_size``; a ``depth`` override cannot load them (the file has
    a different number of blocks), so that combination is refused.
    """
    if num_findings < 1:
        raise ValueError(f"num_findings must be >= 1, got {num_findings}")
    if pretrained and depth is not None:
        raise ValueError(
            f"depth={depth} overrides {name}'s block count, so its pretrained weights do not "
            "fit; drop the depth override or use pretrained=False"
        )
    overrides = {"img_size": img_size, "patch_size": patch_size, "depth": depth}
    backbone = create_timm_model(
        name,
        pretrained=pretrained,
        weights_dir=weights_dir,
        in_chans=1,
        num_classes=0,  # no timm head: ours are the two below
        drop_rate=dropout,
        **{k: v for k, v in overrides.items() if v is not None},
        **timm_kwargs,
    )
    return MultiTaskViT(backbone, num_findings=num_findings)


class FeatureAdapter(nn.Module):
    """Puts student block tokens and teacher block tokens on one layout for feature KD.

    Contract: student tokens ``(B, P + Gs**2, Ws)`` and teacher tokens ``(B, P + Gt**2, Wt)``
    both come out as ``(B, P + g**2, Wt)`` with ``g = min(Gs, Gt)``. The P prefix (class)
    tokens are kept apart and never pooled; the patch tokens of the larger grid are
    adaptive-average-pooled on their 2-D grid down to g x g. Student tokens are then mapped
    by a learnable linear layer Ws -> Wt (no parameters when Ws == Wt). Pooling and the
    linear map commute, so pooling first is only cheaper.

    Ownership: the KD task creates and owns the adapter (a sibling of the student, e.g.
    ``task.adapter``), trains it with the student, and exports only ``task.student``; the
    deployed student's parameter count is ``sum(p.numel() for p in task.student.parameters())``
    and never includes the adapter.
    """

    def __init__(
        self,
        student_width: int,
        teacher_width: int,
        student_grid: int,
        teacher_grid: int,
        *,
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.student_grid = student_grid
        self.teacher_grid = teacher_grid
        self.grid = min(student_grid, teacher_grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.teacher_width = teacher_width
        self.proj: nn.Module = (
            nn.Identity()
            if student_width == teacher_width
            else nn.Linear(student_width, teacher_width)
        )

    @classmethod
    def between(cls, student: MultiTaskViT, teacher: MultiTaskViT) -> FeatureAdapter:
        if student.num_prefix_tokens != teacher.num_prefix_tokens:
            raise ValueError(
                f"student has {student.num_prefix_tokens} prefix tokens, teacher "
                f"{teacher.num_prefix_tokens}; pick ViTs with the same token layout"
            )
        return cls(
            student.width,
            teacher.width,
            student.grid,
            teacher.grid,
            num_prefix_tokens=student.num_prefix_tokens,
        )

    def _pool(self, tokens: torch.Tensor, grid: int, who: str) -> torch.Tensor:
        p = self.num_prefix_tokens
        if tokens.ndim != 3 or tokens.shape[1] != p + grid * grid:
            raise ValueError(
                f"{who} tokens must be (B, {p} + {grid}**2, width), got {tuple(tokens.shape)}"
            )
        if grid == self.grid:
            return tokens
        prefix, patches = tokens[:, :p], tokens[:, p:]
        b, _, w = patches.shape
        patches = patches.transpose(1, 2).reshape(b, w, grid, grid)
        patches = F.adaptive_avg_pool2d(patches, self.grid).flatten(2).transpose(1, 2)
        return torch.cat([prefix, patches], dim=1)

    def adapt_student(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self._pool(tokens, self.student_grid, "student"))

    def pool_teacher(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.teacher_width:
            raise ValueError(f"teacher width must be {self.teacher_width}, got {tokens.shape[-1]}")
        return self._pool(tokens, self.teacher_grid, "teacher")

    def forward(
        self, student_tokens: torch.Tensor, teacher_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adapted student tokens, pooled teacher tokens), both ``(B, P + g**2, Wt)``."""
        return self.adapt_student(student_tokens), self.pool_teacher(teacher_tokens)
