"""Entry point ``cxrkd.kd_losses``: registers ``logit_mse`` for kd_logit (binary layout)."""

from __future__ import annotations

from cxrkd.trainables.kd import Variant, register_kd
from cxrkd_plugin_example.losses import logit_mse_kd


def space(trial) -> dict:
    return {"alpha": trial.suggest_float("alpha", 0.0, 1.0)}


register_kd(
    "logit_mse",
    label="logit MSE (plugin)",
    binary=Variant(
        logit_mse_kd,
        params=("alpha",),
        space=space,
        defaults={"alpha": 0.5},
        limits={"alpha": (0.0, 1.0)},
    ),
)
