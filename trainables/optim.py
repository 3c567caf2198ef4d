"""Optimisers and per-step learning-rate schedules (warm-up, then cosine / step / constant)."""

from __future__ import annotations

import math
from fnmatch import fnmatch

import torch
from torch import nn

from cxrkd.trainables.config import TrainConfig


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Full parameter names (as ``module.named_parameters()`` gives them) that every
    submodule's ``no_weight_decay()`` names, e.g. ``model.pos_embed`` and ``model.cls_token``
    of a timm ViT inside a Task. timm's own optimizer factory asks only the top module; a Task
    wraps its model, so every submodule is asked and its names are prefixed with its path."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if callable(getattr(sub, "no_weight_decay", None)):
            dot = f"{prefix}." if prefix else ""
            names |= {dot + name for name in sub.no_weight_decay()}
    return names


def _exempt(name: str, p: nn.Parameter, patterns: set[str]) -> bool:
    # timm's rule (optim._param_groups.param_groups_weight_decay): 1-D tensors (norm scales,
    # biases), anything named *.bias, and the names no_weight_decay() lists (wildcards too).
    return p.ndim <= 1 or name.endswith(".bias") or any(fnmatch(name, pat) for pat in patterns)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable (``requires_grad``) parameters of ``module`` in two groups: decayed, and
    exempt from weight decay (:func:`_exempt`), named so a test can see which is which."""
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"make_optimizer takes the module to train (e.g. the Task), got "
            f"{type(module).__name__}: parameter names decide which are exempt from weight decay"
        )
    patterns = no_weight_decay_names(module)
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if _exempt(name, p, patterns) else decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "param_names": [n for n, _ in decay],
         "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay],
         "weight_decay": 0.0},
    ]  # fmt: skip


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``module``'s trainable parameters (frozen ones, e.g. a teacher, are
    left out), with weight decay on weights only, as timm and DeiT do (:func:`param_groups`)."""
    groups = param_groups(module, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, *, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (stepped every batch)."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** (step // (cfg.step_every * steps_per_epoch))
    total = max(cfg.epochs * steps_per_epoch - warmup, 1)
    progress = min((step - warmup) / total, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch=steps_per_epoch, cfg=cfg)
    )
