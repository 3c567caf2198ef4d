"""Search-space pieces shared by the KD losses' fragments (``KDLoss.space``).

Pure functions of an optuna-like ``trial`` (no optuna import): ``spaces/kd_vit.py`` and
``spaces/kd_logit.py`` call a loss's fragment after ``kd_approach``. One parameter name keeps
one distribution kind and log flag across losses and layouts, because ``lowres-kd-open``
draws every approach in ONE Optuna study, whose storage refuses a name seen uniform in one
trial and log-uniform in another (a range may differ: hinton's alpha is in [0, 1]). Ranges
of the ``mtl`` fragments (the MLCAK paper gives no values; the ``binary`` ones are in their
loss modules):

- ``alpha``, ``beta`` (logit terms) uniform in [0, 2]: the paper adds them to the BCE terms
  with weights of order 1; 0 lets the search switch a term off.
- ``gamma`` (feature MSE) log-uniform in [1e-3, 10]: raw block outputs are not normalised and
  their MSE changes by orders of magnitude with model size, depth and pretraining, so the
  weight is searched over four decades rather than a linear range.
- ``temperature`` log-uniform in [1, 20], as for ``kd_logit``.
"""

from __future__ import annotations


def suggest_alpha(trial) -> float:
    return trial.suggest_float("alpha", 0.0, 2.0)


def suggest_beta(trial) -> float:
    return trial.suggest_float("beta", 0.0, 2.0)


def suggest_gamma(trial) -> float:
    return trial.suggest_float("gamma", 1e-3, 10.0, log=True)


def suggest_temperature(trial) -> float:
    return trial.suggest_float("temperature", 1.0, 20.0, log=True)


def feature_space(trial) -> dict:
    """alpha, beta, gamma, in this order: the fragment of the MSE-based feature losses."""
    alpha = suggest_alpha(trial)
    beta = suggest_beta(trial)
    return {"alpha": alpha, "beta": beta, "gamma": suggest_gamma(trial)}
