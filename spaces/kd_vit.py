"""Space of ``kd_vit``: lr, weight decay, the KD approach, then what that approach reads.

``kd_approach`` is a choice over every KD loss of the ``mtl`` layout (:mod:`trainables.kd`, in
their ``order``); a study cell usually pins it (``FixingTrial``), and the space then suggests
only what the loss it gets back reads: its own fragment, ``Variant.space`` (``gamma`` for the
feature losses, ``temperature`` for vanilla and dkd; the config refuses the other). The
ranges, and why one parameter name keeps one distribution across losses, are in
``trainables/kd/_space.py``.
"""

from cxrkd.spaces import register_space
from cxrkd.spaces.vit_mtl import suggest_vit_optimizer
from cxrkd.trainables.kd import get_kd, kd_names, layout_of

LAYOUT = layout_of("kd_vit")


@register_space("kd_vit")
def space(trial) -> dict:
    out = suggest_vit_optimizer(trial)
    approach = trial.suggest_categorical("kd_approach", list(kd_names(LAYOUT)))
    out["kd_approach"] = approach
    out.update(get_kd(approach).on(LAYOUT).space(trial))
    return out
