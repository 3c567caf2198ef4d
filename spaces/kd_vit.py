"""Space of ``kd_vit``: lr, weight decay, the KD weights, and T for vanilla KD only.

``kd_approach`` is a grid axis of the study: each cell pins it (``FixingTrial``), and the
space branches on the value it gets back, so it suggests only what that approach uses
(``temperature`` for vanilla, ``gamma`` for the feature approaches; the config refuses the
other). Ranges (the paper gives no values):

- ``alpha``, ``beta`` (logit terms) uniform in [0, 2]: the paper adds them to the BCE terms
  with weights of order 1; 0 lets the search switch a term off.
- ``gamma`` (feature MSE) log-uniform in [1e-3, 10]: raw block outputs are not normalised and
  their MSE changes by orders of magnitude with model size, depth and pretraining, so the
  weight is searched over four decades rather than a linear range.
- ``temperature`` log-uniform in [1, 20], as for ``kd_logit``.
"""

from spaces import register_space
from spaces.vit_mtl import suggest_vit_optimizer
from trainables.losses import KD_APPROACHES


@register_space("kd_vit")
def space(trial) -> dict:
    out = suggest_vit_optimizer(trial)
    approach = trial.suggest_categorical("kd_approach", list(KD_APPROACHES))
    out["kd_approach"] = approach
    out["alpha"] = trial.suggest_float("alpha", 0.0, 2.0)
    out["beta"] = trial.suggest_float("beta", 0.0, 2.0)
    if approach == "vanilla":
        out["temperature"] = trial.suggest_float("temperature", 1.0, 20.0, log=True)
    else:
        out["gamma"] = trial.suggest_float("gamma", 1e-3, 10.0, log=True)
    return out
