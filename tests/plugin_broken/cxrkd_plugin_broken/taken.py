"""Registers method ``own_method``, then ``transfer``: a built-in name (refused, and
``own_method`` is withdrawn with it)."""

from cxrkd.trainables.methods import register_method
from cxrkd.trainables.methods.transfer import TransferConfig


@register_method("own_method", config=TransferConfig, tasks=("binary",))
def build_own(cfg, info, ctx):
    raise NotImplementedError


@register_method("transfer", config=TransferConfig, tasks=("binary",))
def build(cfg, info, ctx):
    raise NotImplementedError
