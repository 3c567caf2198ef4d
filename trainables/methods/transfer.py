"""``transfer``: a timm model fine-tuned (``freeze=False``) or as a fixed feature extractor
(``freeze=True``: only the head trains, BatchNorm statistics frozen). Also trains teachers."""

from __future__ import annotations

from dataclasses import dataclass

from cxrkd.trainables.config import ConfigError, TrialConfig
from cxrkd.trainables.methods import register_method
from cxrkd.trainables.methods.classify import ClassifierTask
from cxrkd.trainables.models import create_model, model_normalization


@dataclass(frozen=True)
class TransferConfig:
    freeze: bool = False
    dropout: float = 0.0  # before the classifier head

    def validate(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"bad value dropout={self.dropout!r}: expected in [0, 1)")


@register_method("transfer", config=TransferConfig, tasks=("binary", "multiclass"))
def build(cfg: TrialConfig, info, ctx) -> ClassifierTask:
    model = create_model(
        cfg.train.model,
        num_outputs=info.num_outputs,
        pretrained=cfg.train.pretrained,
        freeze=cfg.method.freeze,
        dropout=cfg.method.dropout,
        weights_dir=cfg.train.weights_dir,
    )
    return ClassifierTask(model, info, normalization=model_normalization(cfg.train.model))
