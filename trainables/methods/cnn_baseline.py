"""``cnn_baseline``: the pneumonia paper's small CNN trained from scratch (its Table 4.1 row 1)."""

from __future__ import annotations

from dataclasses import dataclass

from cxrkd.trainables.config import ConfigError, TrialConfig
from cxrkd.trainables.methods import register_method
from cxrkd.trainables.methods.classify import ClassifierTask
from cxrkd.trainables.models import create_model, model_normalization


@dataclass(frozen=True)
class CNNBaselineConfig:
    dropout: float = 0.5  # before each fully connected layer, as in the paper

    def validate(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"bad value dropout={self.dropout!r}: expected in [0, 1)")


@register_method("cnn_baseline", config=CNNBaselineConfig, tasks=("binary", "multiclass"))
def build(cfg: TrialConfig, info, ctx) -> ClassifierTask:
    if cfg.train.model != "cnn_baseline":
        raise ConfigError(
            f"method cnn_baseline trains model 'cnn_baseline', not {cfg.train.model!r}; "
            "use method 'transfer' for timm models"
        )
    if cfg.train.pretrained:
        raise ConfigError("cnn_baseline is trained from scratch: set pretrained=false")
    model = create_model(
        "cnn_baseline", num_outputs=info.num_outputs, pretrained=False, dropout=cfg.method.dropout
    )
    return ClassifierTask(model, info, normalization=model_normalization("cnn_baseline"))
