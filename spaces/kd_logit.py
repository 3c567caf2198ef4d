"""Space of ``kd_logit``: the optimiser, then what the cell's KD loss reads.

``kd_approach`` is not searched here: a study cell pins it (``pneumonia-kd-open``: one cell
per KD loss of the ``binary`` layout; ``--set kd_approach=dkd``) or searches it as a choice
(``SearchCell.choices``), and a cell that does neither gets ``hinton``, the method's default.
The space asks for it as a categorical of that one value: the view of a cell returns a
pinned value unasked (``spaces.cell_space.FixingTrial``), and Optuna records a one-value
categorical without sampling it, so ``pneumonia-kd``'s searched values (the optimiser, then
Hinton's alpha in [0, 1] and temperature in [1, 20], log) are drawn exactly as before the
KD-loss registry. Then the loss's own fragment (``Variant.space``, in its module of
``trainables/kd``).
"""

from cxrkd.spaces import register_space, suggest_optimizer
from cxrkd.trainables.kd import LAYOUTS, get_kd, layout_of

LAYOUT = layout_of("kd_logit")


@register_space("kd_logit")
def space(trial) -> dict:
    out = suggest_optimizer(trial)
    approach = trial.suggest_categorical("kd_approach", [LAYOUTS[LAYOUT].default])
    out["kd_approach"] = approach
    out.update(get_kd(approach).on(LAYOUT).space(trial))
    return out
