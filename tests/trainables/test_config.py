"""Trial config: Tune's flat dict -> a frozen, typed, validated TrialConfig (STYLE.md 3)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from cxrkd.trainables.config import ConfigError, TrainConfig, field_names, parse_config
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.methods import load_methods

METHODS = sorted(load_methods())


def test_unknown_key_is_rejected_with_the_valid_keys_listed():
    with pytest.raises(ConfigError) as err:
        parse_config({"method": "transfer", "lr": 1e-3, "lrr": 1e-3})
    message = str(err.value)
    assert "unknown config keys ['lrr']" in message
    assert "'transfer'" in message
    # The fix: every valid key is listed, the shared ones and the method's own.
    valid = message.split("valid keys:")[1]
    assert "'lr'" in valid and "'freeze'" in valid and "'batch_size'" in valid


def test_a_key_of_another_method_is_unknown():
    # `alpha` is kd_logit's; a transfer trial must not swallow it silently.
    with pytest.raises(ConfigError, match=r"unknown config keys \['alpha'\]"):
        parse_config({"method": "transfer", "alpha": 0.5})


def test_missing_or_unknown_method_is_refused():
    with pytest.raises(ConfigError, match="no 'method' key"):
        parse_config({"lr": 1e-3})
    with pytest.raises(CxrkdError, match=r"unknown method 'trasnfer' \(did you mean transfer"):
        parse_config({"method": "trasnfer"})


BAD_VALUES = [
    ("kd_logit", "temperature", 0.0),
    ("kd_logit", "temperature", -1.0),
    ("kd_logit", "alpha", -0.1),
    ("kd_logit", "alpha", 1.5),
    ("kd_logit", "teacher_cache", "sometimes"),
    ("transfer", "batch_size", 0),
    ("transfer", "epochs", 0),
    ("transfer", "lr", 0.0),
    ("transfer", "lr", float("nan")),
    ("transfer", "img_size", 4),
    ("transfer", "momentum", 1.0),
    ("transfer", "optimizer", "adam"),
    ("transfer", "schedule", "linear"),
    ("transfer", "step_gamma", 0.0),
    ("transfer", "steps_per_epoch", -1),
    ("transfer", "grad_clip", -1.0),
    ("transfer", "seed", -1),
    ("transfer", "dropout", 1.0),
    ("cnn_baseline", "dropout", 1.0),
    ("cnn_baseline", "dropout", -0.1),
]


@pytest.mark.parametrize(("method", "key", "value"), BAD_VALUES)
def test_bad_value_is_rejected_naming_key_and_value(method, key, value):
    with pytest.raises(ConfigError, match=re.escape(f"bad value {key}={value!r}: expected")):
        parse_config({"method": method, key: value})


def test_boundary_values_are_accepted():
    cfg = parse_config({"method": "kd_logit", "alpha": 0.0, "temperature": 1e-3})
    assert (cfg.method.alpha, cfg.method.temperature) == (0.0, 1e-3)
    assert parse_config({"method": "kd_logit", "alpha": 1.0}).method.alpha == 1.0
    assert parse_config({"method": "cnn_baseline", "dropout": 0.0}).method.dropout == 0.0


def test_strings_from_set_are_coerced_to_the_field_types():
    cfg = parse_config(
        {
            "method": "kd_logit",
            "augment": "true",
            "pretrained": "False",
            "batch_size": "16",
            "lr": "1e-3",
            "epochs": 4.0,  # an integral float (Optuna/numpy) is a fine int
            "temperature": "2",
            "teacher_path": "none",
            "weights_dir": "null",
        }
    )
    t = cfg.train
    assert t.augment is True and t.pretrained is False
    assert t.batch_size == 16 and type(t.batch_size) is int
    assert t.lr == 1e-3 and type(t.lr) is float
    assert t.epochs == 4 and type(t.epochs) is int
    assert cfg.method.temperature == 2.0 and type(cfg.method.temperature) is float
    assert cfg.method.teacher_path is None and t.weights_dir is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("batch_size", "16.5"), ("batch_size", 16.5), ("epochs", "three"), ("augment", "maybe")],
)
def test_values_that_are_not_of_the_field_type_are_rejected(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"bad value {key}={value!r}: expected")):
        parse_config({"method": "transfer", key: value})


def test_config_is_frozen():
    cfg = parse_config({"method": "transfer"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("method", METHODS)
def test_method_fields_do_not_shadow_shared_fields(method):
    # A key in both would be routed to both dataclasses: one meaning per key.
    shared = field_names(TrainConfig) & field_names(load_methods()[method].config_cls)
    assert not shared


@pytest.mark.parametrize("method", METHODS)
def test_to_flat_round_trips_through_parse_config(method):
    cfg = parse_config({"method": method, "lr": 2e-4, "seed": 7, "augment": True})
    flat = cfg.to_flat()
    assert set(flat) == field_names(TrainConfig) | field_names(cfg.method.__class__)
    assert parse_config(flat) == cfg
    # The JSON saved beside each checkpoint parses back to the same config, too.
    assert parse_config(json.loads(cfg.to_json())) == cfg
    assert cfg.train.lr == 2e-4 and cfg.train.seed == 7 and cfg.train.augment is True


def test_defaults_are_valid_for_every_method():
    for method in METHODS:
        cfg = parse_config({"method": method})
        assert cfg.train.method == method
        assert isinstance(cfg.method, load_methods()[method].config_cls)
