"""Space of ``cnn_baseline``: optimiser + dropout (trained from scratch, so a higher lr range)."""

from cxrkd.spaces import register_space, suggest_optimizer


@register_space("cnn_baseline")
def space(trial) -> dict:
    out = suggest_optimizer(trial)
    out["dropout"] = trial.suggest_float("dropout", 0.0, 0.6)
    return out
