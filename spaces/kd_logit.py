"""Space of ``kd_logit``: optimiser + Hinton's alpha in [0, 1] and temperature in [1, 20] (log)."""

from cxrkd.spaces import register_space, suggest_optimizer


@register_space("kd_logit")
def space(trial) -> dict:
    out = suggest_optimizer(trial)
    out["alpha"] = trial.suggest_float("alpha", 0.0, 1.0)
    out["temperature"] = trial.suggest_float("temperature", 1.0, 20.0, log=True)
    return out
