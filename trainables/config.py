"""Trial configuration: Tune's flat dict -> one frozen, typed, validated object.

Config flows one way (STYLE.md 3): the search space proposes a flat dict whose keys equal the
field names below; :func:`parse_config` splits it into the shared :class:`TrainConfig` and the
method's own config dataclass, rejects unknown keys and bad values, and the result is passed
on as explicit arguments. Nothing downstream looks a value up with a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from cxrkd.trainables.errors import CxrkdError


class ConfigError(CxrkdError):
    """An unknown key or a bad value in a trial configuration."""


@dataclass(frozen=True)
class TrainConfig:
    """What every method shares: data, optimisation, schedule, seeds, evaluation."""

    method: str
    model: str = "resnet18"  # timm name, or one of cxrkd's own (cnn_baseline)
    pretrained: bool = False  # ImageNet weights; the paper profile turns it on
    img_size: int = 64  # model input side; stores are resized on the device
    epochs: int = 3
    batch_size: int = 32
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0  # linear warm-up, counted in (fractional) epochs
    step_every: int = 10  # step schedule: epochs between decays
    step_gamma: float = 0.1  # step schedule: decay factor
    augment: bool = False  # small affine + brightness/contrast on the device, no flips
    seed: int = 0
    steps_per_epoch: int = 0  # 0: the whole training split; >0 caps it (demo / smoke tests)
    evaluate_test: bool = False  # only the final stage touches the test split
    grad_clip: float = 0.0  # 0: off
    weights_dir: str | None = (
        None  # local pretrained weights (air-gapped sites); infra, not searched
    )

    def validate(self) -> None:
        _check(self.img_size >= 8, "img_size", self.img_size, "an input side of at least 8 px")
        _check(self.epochs >= 1, "epochs", self.epochs, "at least 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")
        _check(self.lr > 0, "lr", self.lr, "a positive learning rate")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        _check(self.optimizer in ("adamw", "sgd"), "optimizer", self.optimizer, "adamw or sgd")
        _check(
            self.schedule in ("cosine", "step", "constant"),
            "schedule",
            self.schedule,
            "cosine, step or constant",
        )
        _check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, ">= 0")
        _check(self.step_every >= 1, "step_every", self.step_every, "at least 1")
        _check(0 < self.step_gamma <= 1, "step_gamma", self.step_gamma, "in (0, 1]")
        _check(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch, ">= 0")
        # numpy's seeded generators (batch order, augmentation draws) refuse negative seeds.
        _check(self.seed >= 0, "seed", self.seed, ">= 0")
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0 (0 turns it off)")


def _check(ok: bool, key: str, value: Any, want: str) -> None:
    if not ok:
        raise ConfigError(f"bad value {key}={value!r}: expected {want}")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Accept what Tune/Optuna/`--set` produce (numpy scalars, strings) for typed fields."""
    if kind in (int | None, float | None):  # optional numbers: "none"/"null" mean None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = int if kind == int | None else float
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            number = float(value)
            if not math.isfinite(number):  # float("inf"), "nan": parse, then poison a trial
                raise ConfigError(f"bad value {key}={value!r}: expected a finite number")
            return number
        if kind == str | None or kind is str:
            if value is None or (kind is not str and str(value).lower() in ("none", "null")):
                return None
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"bad value {key}={value!r}: expected {kind.__name__}") from None
    return value


def coerce_field(cls: type, key: str, value: Any) -> Any:
    """``value`` converted to the type of field ``key`` of dataclass ``cls``."""
    return _coerce(key, value, get_type_hints(cls)[key])


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


@dataclass(frozen=True)
class TrialConfig:
    train: TrainConfig
    method: Any  # the method's own frozen dataclass

    def to_flat(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.train), **dataclasses.asdict(self.method)}

    def to_json(self) -> str:
        return json.dumps(self.to_flat(), indent=2, sort_keys=True)


def field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def parse_config(flat: dict[str, Any]) -> TrialConfig:
    """Split, type and validate a flat trial config; unknown keys are an error."""
    from cxrkd.trainables.methods import get_method

    if "method" not in flat:
        raise ConfigError("trial config has no 'method' key")
    method = get_method(str(flat["method"]))
    train_keys, method_keys = field_names(TrainConfig), field_names(method.config_cls)
    unknown = sorted(set(flat) - train_keys - method_keys)
    if unknown:
        raise ConfigError(
            f"unknown config keys {unknown} for method {method.name!r}; valid keys: "
            f"{sorted(train_keys | method_keys)}"
        )
    train = _build(TrainConfig, {k: v for k, v in flat.items() if k in train_keys})
    extra = _build(method.config_cls, {k: v for k, v in flat.items() if k in method_keys})
    train.validate()
    if hasattr(extra, "validate"):
        extra.validate()
    return TrialConfig(train=train, method=extra)
