"""Space of ``vit_mtl`` (the MLCAK paper's ViTs without KD, and its teachers).

The paper trains every ViT with AdamW at lr 5e-4 (cosine) and batch 64, which the study fixes;
searched: lr, log-uniform over [1e-5, 3e-3] around the paper's 5e-4, and AdamW's decoupled
weight decay, log-uniform over [1e-4, 0.3] (ViT fine-tuning recipes use 0.01 to 0.3).
"""

from cxrkd.spaces import register_space


def suggest_vit_optimizer(trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 1e-5, 3e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.3, log=True),
    }


@register_space("vit_mtl")
def space(trial) -> dict:
    return suggest_vit_optimizer(trial)
