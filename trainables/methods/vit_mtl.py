"""``vit_mtl``: the MLCAK paper's multi-task ViT without KD (seeds/002, Table 1; also its teachers).

``loss = BCE(MLCT logits, findings) + BCE(MCCT logit, global label)``
(:func:`trainables.losses.multitask_bce`): MLCT has one logit per local finding, MCCT one
normal/abnormal logit (:class:`trainables.vit.MultiTaskViT`).

``low_res=0`` trains on the plain ``img_size`` view (the high-resolution teachers);
``low_res>0`` on the low-resolution view of the same image: area-downsampled to ``low_res`` px
and upsampled back to ``img_size`` (paper Fig. 1), so a 224-px ViT sees 28 px of detail.
Multi-label datasets only: the loop refuses a binary dataset with the method's task list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cxrkd.trainables.config import ConfigError, TrialConfig
from cxrkd.trainables.data.pipeline import DatasetInfo
from cxrkd.trainables.losses import multitask_bce
from cxrkd.trainables.methods import register_method
from cxrkd.trainables.models import model_normalization
from cxrkd.trainables.task import Task
from cxrkd.trainables.vit import MultiTaskViT, create_vit


@dataclass(frozen=True)
class ViTMTLConfig:
    low_res: int = 0  # 0: the plain img_size view; >0: the low-resolution view (px, < img_size)
    patch_size: int = 0  # 0: the timm model's own (16); smaller for CPU-sized demo variants
    depth: int = 0  # 0: the timm model's own block count (12 for ViT-Tiny/Small/Base)
    dropout: float = 0.0  # on the pooled class token, before both heads (timm drop_rate)

    def validate(self) -> None:
        for name in ("low_res", "patch_size", "depth"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(
                    f"bad value {name}={value!r}: expected >= 0 (0 means the model's own)"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"bad value dropout={self.dropout!r}: expected in [0, 1)")


def heads(out: dict) -> dict[str, torch.Tensor]:
    """The evaluated output of a multi-task model: ``{"mlct": (B, F), "mcct": (B,)}``."""
    return {"mlct": out["mlct"], "mcct": out["mcct"]}


class MultiTaskTask(Task):
    """A two-headed ViT trained with ``multitask_bce`` on one view ("hr", or "lr" when
    ``low_res`` is set). The KD task extends it with a teacher."""

    def __init__(
        self,
        model: MultiTaskViT,
        info: DatasetInfo,
        *,
        low_res: int | None,
        normalization: tuple[float, float],
    ) -> None:
        super().__init__(model, normalization=normalization)
        self.low_res = low_res  # the loop builds the "lr" view when this is set
        self.view = "hr" if low_res is None else "lr"
        findings, self.global_col = info.label_columns()
        self.finding_cols = list(findings)

    def classification(self, out: dict, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss", "bce_mlct", "bce_mcct"}`` of the model outputs against the labels."""
        return multitask_bce(
            out["mlct"], out["mcct"], y[:, self.finding_cols], y[:, self.global_col]
        )

    def forward(self, views: dict, y: torch.Tensor) -> dict:
        out = self.model(views[self.view])
        cls = self.classification(out, y)
        return {
            "loss": cls["loss"],
            "output": heads(out),
            "bce_mlct": cls["bce_mlct"].detach(),
            "bce_mcct": cls["bce_mcct"].detach(),
        }

    def predict(self, views: dict) -> dict[str, torch.Tensor]:
        return heads(self.model(views[self.view]))


def check_low_res(low_res: int, img_size: int) -> None:
    if low_res >= img_size:
        raise ConfigError(
            f"bad value low_res={low_res}: a low-resolution view must be below the model input "
            f"img_size={img_size}; pick low_res < {img_size} (e.g. {max(1, img_size // 4)}), "
            "or low_res=0 for the plain view"
        )


def build_vit(cfg: TrialConfig, info: DatasetInfo, *, method: str) -> MultiTaskViT:
    """The configured two-headed ViT (``cfg.method`` has patch_size, depth, dropout)."""
    t, m = cfg.train, cfg.method
    if m.patch_size and t.img_size % m.patch_size:
        raise ConfigError(
            f"bad value patch_size={m.patch_size}: it must divide img_size={t.img_size} "
            "(a ViT cuts the image into whole patches); pick a divisor or patch_size=0"
        )
    if t.pretrained and m.depth:
        raise ConfigError(
            f"depth={m.depth} changes {t.model}'s block count, so its pretrained weights do not "
            "fit; set depth=0 or pretrained=false"
        )
    try:
        return create_vit(
            t.model,
            num_findings=len(info.finding_labels),
            pretrained=t.pretrained,
            img_size=t.img_size,
            patch_size=m.patch_size or None,
            depth=m.depth or None,
            weights_dir=t.weights_dir,
            dropout=m.dropout,
        )
    except TypeError as exc:  # timm's non-ViT constructors refuse img_size/patch_size
        raise ConfigError(
            f"method {method} trains a timm ViT (e.g. vit_tiny_patch16_224), but "
            f"model={t.model!r} is not one ({exc}); set model to a ViT"
        ) from None


@register_method("vit_mtl", config=ViTMTLConfig, tasks=("multilabel",))
def build(cfg: TrialConfig, info: DatasetInfo, ctx) -> MultiTaskTask:
    check_low_res(cfg.method.low_res, cfg.train.img_size)
    model = build_vit(cfg, info, method="vit_mtl")
    return MultiTaskTask(
        model,
        info,
        low_res=cfg.method.low_res or None,
        normalization=model_normalization(cfg.train.model),
    )
