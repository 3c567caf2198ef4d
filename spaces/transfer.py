"""Space of ``transfer`` (fine-tuned or frozen timm models, and teachers)."""

from cxrkd.spaces import register_space, suggest_optimizer


@register_space("transfer")
def space(trial) -> dict:
    return suggest_optimizer(trial)
