"""Classifier construction: our own small registry (the paper's CNN baseline) in front of timm.

``create_model("cnn_baseline", ...)`` builds from the registry below; any other name goes to
timm (``resnet18``, ``resnet50``, ...) with one input channel and ``num_outputs`` logits.
Outputs are logits: the sigmoid of the paper's output layer lives in the loss
(``BCEWithLogits``), which is numerically safer. ViTs with two heads are in ``trainables.vit``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import timm
import timm.models
import timm.utils
from torch import nn

from cxrkd.trainables.data.augment import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, gray_stats
from cxrkd.trainables.weights import UnknownModel, create_timm_model, unknown_model_message

__all__ = [
    "DEFAULT_NORMALIZATION",
    "MODELS",
    "CnnBaseline",
    "ModelRegistry",
    "UnknownModel",
    "create_model",
    "freeze_backbone",
    "model_normalization",
]

ModelBuilder = Callable[..., nn.Module]

# What cxrkd's own (from-scratch) models are normalised with, unless registered otherwise: the
# ImageNet grey statistics every model used before normalisation was per model, so the
# paper's CNN baseline keeps its numbers. Any fixed affine map suits a model trained from
# scratch; this one only has to be the same in training, evaluation and export.
DEFAULT_NORMALIZATION = (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD)


class ModelRegistry:
    """Name -> builder. Builders take keyword-only ``num_outputs``, ``in_chans``, ``dropout``."""

    def __init__(self) -> None:
        self._builders: dict[str, ModelBuilder] = {}
        self._normalization: dict[str, tuple[float, float]] = {}

    def register(
        self, name: str, *, normalization: tuple[float, float] = DEFAULT_NORMALIZATION
    ) -> Callable[[ModelBuilder], ModelBuilder]:
        """Register a builder; ``normalization`` is the grey ``(mean, std)`` of its inputs."""
        mean, std = gray_stats(*normalization)  # validates std > 0

        def decorator(builder: ModelBuilder) -> ModelBuilder:
            if name in self._builders:
                raise ValueError(f"model {name!r} is already registered; pick another name")
            self._builders[name] = builder
            self._normalization[name] = (mean, std)
            return builder

        return decorator

    def normalization(self, name: str) -> tuple[float, float]:
        return self._normalization[name]

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def names(self) -> list[str]:
        return sorted(self._builders)

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        builder = self._builders[name]
        accepted = inspect.signature(builder).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        unknown = [] if takes_any else sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"model {name!r} does not take {unknown}; it takes {sorted(accepted)}")
        return builder(**kwargs)


MODELS = ModelRegistry()


class CnnBaseline(nn.Module):
    """The pneumonia paper's from-scratch baseline (seed 000, section 3.3.1).

    conv3x3(in->c1)-ReLU-maxpool2, conv3x3(c1->c2)-ReLU-maxpool2, flatten, fc(->hidden)-ReLU-
    dropout, fc(->num_outputs). The paper gives no widths; 32/64/128 are the usual Keras sizes.

    Sizing: an adaptive average pool to ``pooled_side`` x ``pooled_side`` sits before the
    flatten, so the head has the same size at every input resolution. Without it, a 224 px
    input flattens to 64 * 56 * 56 = 200,704 features and fc1 alone has 25.7 M parameters
    (more than ResNet-18's 11.2 M, which would make the "small baseline" the largest model).
    With the default 8 x 8: 64 * 8 * 8 = 4,096 features, fc1 = 4,096 * 128 + 128 = 524,416
    parameters, and the whole model 543,361 at one output. At 32 px input the feature map is
    already 8 x 8, so the pool is the identity and the layout is exactly the paper's.
    """

    def __init__(
        self,
        *,
        num_outputs: int = 1,
        in_chans: int = 1,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        pooled_side: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(pooled_side)
        self.fc1 = nn.Linear(c2 * pooled_side * pooled_side, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_outputs)

    # timm's split, so evaluation can run the head in fp32 (trainables.precision.fp32_head).
    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x):
        x = self.pool(x).flatten(1)
        return self.fc2(self.drop(self.fc1(x).relu()))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The output layer: what ``freeze=True`` leaves trainable (timm's convention)."""
        return self.fc2


@MODELS.register("cnn_baseline")
def cnn_baseline(
    *,
    num_outputs: int,
    in_chans: int = 1,
    dropout: float = 0.0,
    channels: tuple[int, int] = (32, 64),
    hidden: int = 128,
    pooled_side: int = 8,
) -> CnnBaseline:
    return CnnBaseline(
        num_outputs=num_outputs,
        in_chans=in_chans,
        channels=tuple(channels),
        hidden=hidden,
        pooled_side=pooled_side,
        dropout=dropout,
    )


def model_normalization(name: str) -> tuple[float, float]:
    """The one-channel ``(mean, std)`` that inputs of model ``name`` are normalised with.

    The single source of truth for trials, teacher forwards and caches, evaluation and
    export: ``x = (pixels / 255 - mean) / std``. timm models get the statistics of their
    pretrained weights (``pretrained_cfg``, read offline, nothing downloaded): ViT augreg
    weights 0.5/0.5, ResNets ImageNet's, ``name.tag`` the tag's. It depends on the name only,
    so a model trained from scratch is normalised as its pretrained version would be.
    cxrkd's own models have what they registered (:data:`DEFAULT_NORMALIZATION`).

    RGB -> one channel: the plain average of the three channels (:func:`gray_stats`). With
    ``in_chans=1`` timm sums the stem's RGB kernels, so the model treats a grey pixel g as
    (g, g, g): every channel sees the same input, and no channel weighting is more right than
    another (a luminance weighting would describe an RGB photo turned grey, which a
    radiograph is not). For ImageNet that gives 0.449 / 0.226, each channel's own value
    within 0.036 (mean) and 1.3% (std); for 0.5/0.5 weights it is exact. Rounded to 6
    decimals, so equal statistics compare and print equal.
    """
    if name in MODELS:
        return MODELS.normalization(name)
    if not timm.is_model(name):
        message = unknown_model_message(name, MODELS.names() + timm.list_models())
        raise UnknownModel(f"{message} cxrkd's own models: {MODELS.names()}.")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        # An architecture without pretrained weights: timm's own default is ImageNet's.
        return DEFAULT_NORMALIZATION
    mean, std = gray_stats(cfg.mean, cfg.std)
    return round(mean, 6), round(std, 6)


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Leave only ``model.get_classifier()`` trainable (the fixed-feature-extractor recipe).

    Every other parameter gets ``requires_grad=False`` and every BatchNorm becomes timm's
    FrozenBatchNorm2d, so its running statistics stay the pretrained ones even in ``.train()``
    (a frozen backbone whose BN statistics drift is not frozen). Build the optimizer after this.
    """
    if not hasattr(model, "get_classifier"):
        raise TypeError(f"{type(model).__name__} has no get_classifier(); cannot freeze it")
    timm.utils.freeze(model)  # all parameters + BatchNorm -> FrozenBatchNorm2d, in place
    head = model.get_classifier()
    for p in head.parameters():
        p.requires_grad = True
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no classifier parameters to train")
    return model


def create_model(
    name: str,
    *,
    num_outputs: int,
    pretrained: bool,
    in_chans: int = 1,
    freeze: bool = False,
    dropout: float = 0.0,
    weights_dir: str | os.PathLike | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a classifier returning ``(B, num_outputs)`` logits.

    ``pretrained=True`` loads weights from ``weights_dir`` / ``$CXRKD_WEIGHTS`` when present,
    else from timm's Hub cache, else raises ``WeightsUnavailable`` at once (see
    ``trainables.weights``). With ``in_chans=1`` timm sums the pretrained first-conv weights
    over RGB. ``freeze=True`` trains only the classifier (see ``freeze_backbone``).
    ``timm_kwargs`` go to the builder (e.g. ``drop_path_rate`` for timm models).
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if "drop_rate" in timm_kwargs:
        raise ValueError("pass dropout=..., not drop_rate=... (create_model maps it for timm)")
    if name in MODELS:
        if pretrained:
            raise ValueError(
                f"{name!r} is trained from scratch and has no pretrained weights; "
                "use pretrained=False (--set pretrained=false)"
            )
        model = MODELS.build(
            name, num_outputs=num_outputs, in_chans=in_chans, dropout=dropout, **timm_kwargs
        )
    elif timm.is_model(name):
        model = create_timm_model(
            name,
            pretrained=pretrained,
            weights_dir=weights_dir,
            in_chans=in_chans,
            num_classes=num_outputs,
            drop_rate=dropout,
            **timm_kwargs,
        )
    else:
        message = unknown_model_message(name, MODELS.names() + timm.list_models())
        raise UnknownModel(f"{message} cxrkd's own models: {MODELS.names()}.")
    return freeze_backbone(model) if freeze else model
