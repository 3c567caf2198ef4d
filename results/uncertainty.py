"""95% confidence intervals and paired tests of the tables' cells, from per-image test scores.

Every final model saved its per-image test scores (:mod:`results.held_out_scores`). For a table
cell (a final-stage cell re-trained on several seeds) and a test metric column:

- **Interval**: one set of ``B`` bootstrap resamples of the test images (stratified by the
  global label, fixed seed) is applied to every model. Per resample the metric is computed
  for each seed's scores and averaged over the seeds; the 2.5th and 97.5th percentiles of
  those averages are the 95% interval. It covers both the finite test set and the seeds.
- **Paired test against the no-KD baseline**: the seeds of each cell are averaged per image
  (a seed ensemble of predicted probabilities), then the two ensembles are compared on the
  same images: DeLong's test for a binary AUROC (global label or one finding); a paired
  bootstrap (same resamples for both) for everything else, e.g. the macro AUROC over findings.
- **Multi-class tasks** save their classes as findings (one-vs-rest, see
  ``trainables.loop.per_image_scores``) and the class index as the global label: ``auc`` (the
  one-vs-rest macro) and each class's AUROC get intervals and paired tests; resamples are
  stratified by class; accuracy and the other argmax metrics get none.

Scores are probabilities computed from the stored logits exactly as the loop computes its
metrics (float64 sigmoid), so a resample of all ones reproduces the trials' test metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from cxrkd.results import stats
from cxrkd.trainables.errors import CxrkdError

RATES = ("acc", "precision", "recall", "f1", "specificity")
_KERNELS: dict[str, Callable] = {
    "auroc": stats.weighted_auc,
    "auprc": stats.weighted_average_precision,
    "sens_at_spec95": stats.weighted_sensitivity_at_specificity,
}
# Global-label columns (binary datasets have the unsuffixed names; multi-label ones _mcct).
_GLOBAL = {"auc": "auroc", "auroc_mcct": "auroc", "auprc": "auprc", "auprc_mcct": "auprc"}
_GLOBAL |= {"sens_at_spec95": "sens_at_spec95", "sens_at_spec95_mcct": "sens_at_spec95"}


class UncertaintyError(CxrkdError):
    """Test scores that cannot be compared (e.g. final models scored on different images)."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # float64, as trainables.evaluate computes the metrics: a float32 sigmoid ties every
    # logit above ~17 at exactly 1.0
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _nanmean(stack: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmean(stack, axis=0)


def is_auroc(column: str) -> bool:
    """Whether a trials column is an AUROC (global, macro over findings, or one finding)."""
    name = column.removeprefix("test_")
    return name in ("auc", "auroc_mcct") or (name.startswith("auroc_") and name != "auroc_mean")


class CellStats:
    """Bootstrap intervals and paired tests for the final-stage cells of one run.

    ``scores`` is ``{(cell, trial_id): arrays}`` as :func:`results.held_out_scores.load_test_scores`
    returns it; trials without scores are left out of the intervals (a cell whose scored seeds
    are fewer than its completed ones shows the mean over all of them, the CI over the scored).
    """

    def __init__(
        self,
        trials: pd.DataFrame,
        scores: Mapping[tuple[str, str], Mapping[str, np.ndarray]],
        *,
        stage: str = "final",
        n_boot: int = stats.N_BOOT,
        seed: int = stats.SEED,
    ) -> None:
        done = trials[(trials["stage"] == stage) & (trials["status"] == "completed")]
        by_id = {(r["cell"], r["trial_id"]): r for _, r in done.iterrows()}
        self._seeds: dict[str, list[tuple[Mapping[str, np.ndarray], float]]] = {}
        label = None
        for key in sorted(scores, key=str):
            if key not in by_id:
                continue
            arrays = scores[key]
            y = np.asarray(arrays["global_label"]).reshape(-1)
            if label is None:
                label, first = y, key
            elif y.shape != label.shape or not np.array_equal(y, label):
                raise UncertaintyError(
                    f"final models {first} and {key} were tested on different images "
                    f"({label.size} and {y.size} labels that differ); intervals and paired "
                    "tests need one test split: report runs of one dataset only"
                )
            # the validation threshold the trial's *_at_val_thr test metrics used (binary)
            threshold = pd.to_numeric(by_id[key].get("test_threshold"), errors="coerce")
            threshold = float(threshold) if pd.notna(threshold) else np.nan
            self._seeds.setdefault(key[0], []).append((arrays, threshold))
        self.n_images = 0 if label is None else int(label.size)
        self.counts = (
            None
            if label is None
            else stats.resample_counts(label.size, n_boot=n_boot, strata=label, seed=seed)
        )
        self._cache: dict[tuple, np.ndarray | None] = {}

    # --- one model --------------------------------------------------------------------------

    def values(
        self, counts: np.ndarray, arrays, column: str, threshold: float = np.nan, *, memo=None
    ):
        """``(B,)`` values of ``column`` for one model's arrays under ``counts``; None when the
        column cannot be computed from per-image scores (e.g. params, or no threshold).
        ``memo`` (a hashable naming the model) caches per-finding values: the macro over
        findings and the per-finding table share them."""
        name = column.removeprefix("test_")

        def finding(kind: str, j: int) -> np.ndarray:
            key = ("finding", memo, kind, j)
            if memo is None or key not in self._cache:
                value = _KERNELS[kind](counts, ys[:, j], ps[:, j])
                if memo is None:
                    return value
                self._cache[key] = value
            return self._cache[key]

        y = np.asarray(arrays["global_label"]).reshape(-1)
        if "global_logit" not in arrays:  # multi-class: the classes are given as findings
            if name != "auc" and not name.startswith("auroc_"):
                return None  # accuracy, macro F1, ...: not from one-vs-rest scores here
            name = "auroc_mlct" if name == "auc" else name  # auc: the macro over classes
        elif name in _GLOBAL:
            return _KERNELS[_GLOBAL[name]](counts, y, _sigmoid(arrays["global_logit"]))
        if "finding_logits" in arrays:
            ys, ps = arrays["finding_labels"], _sigmoid(arrays["finding_logits"])
            names = [str(n) for n in arrays["finding_names"]]
            if name.endswith("_mlct") and name[: -len("_mlct")] in _KERNELS:
                per = [finding(name[: -len("_mlct")], j) for j in range(len(names))]
                return _nanmean(np.stack(per)) if per else None
            kind, _, label = name.partition("_")
            if kind == "auroc" and label in names:
                return finding("auroc", names.index(label))
        rate = name.removesuffix("_at_val_thr")
        if rate in RATES:
            thr = threshold if name.endswith("_at_val_thr") else 0.5
            if not np.isfinite(thr):
                return None
            return stats.weighted_rates(counts, y, _sigmoid(arrays["global_logit"]) >= thr)[rate]
        return None

    def distribution(self, cell: str, column: str) -> np.ndarray | None:
        """``(B,)`` bootstrap values of ``column`` averaged over ``cell``'s scored seeds."""
        key = ("dist", cell, column)
        if key not in self._cache:
            seeds = self._seeds.get(cell, [])
            per = [
                self.values(self.counts, a, column, t, memo=(cell, i))
                for i, (a, t) in enumerate(seeds)
            ]
            ok = [v for v in per if v is not None]
            self._cache[key] = _nanmean(np.stack(ok)) if ok and len(ok) == len(per) else None
        return self._cache[key]

    def interval(self, cell: str, column: str) -> tuple[float, float]:
        """The 95% percentile interval of ``column`` for ``cell`` (NaNs when not computable)."""
        dist = self.distribution(cell, column)
        return (np.nan, np.nan) if dist is None else stats.percentile_interval(dist)

    # --- two models -------------------------------------------------------------------------

    def ensemble(self, cell: str) -> dict[str, np.ndarray] | None:
        """The seed ensemble of ``cell``: per image, the mean of its seeds' probabilities
        (returned as logits, so :meth:`values` reads it like one model)."""
        key = ("ensemble", cell)
        if key not in self._cache:
            self._cache[key] = self._ensemble(cell)
        return self._cache[key]

    def _ensemble(self, cell: str) -> dict[str, np.ndarray] | None:
        seeds = self._seeds.get(cell, [])
        if not seeds:
            return None
        out = {"global_label": seeds[0][0]["global_label"]}
        for key in ("global_logit", "finding_logits"):
            if key in seeds[0][0]:
                p = np.mean([_sigmoid(a[key]) for a, _ in seeds], axis=0)
                p = np.clip(p, 1e-300, 1 - 1e-16)
                out[key] = np.log(p) - np.log1p(-p)
        for key in ("finding_labels", "finding_names"):
            if key in seeds[0][0]:
                out[key] = seeds[0][0][key]
        return out

    def paired(self, cell: str, baseline: str, column: str) -> stats.PairedTest | None:
        """``cell`` against ``baseline`` on ``column``, both as seed ensembles; None when
        either has no scores or the column is not a score-based metric."""
        a, b = self.ensemble(cell), self.ensemble(baseline)
        if a is None or b is None:
            return None
        name = column.removeprefix("test_")
        binary = _GLOBAL.get(name) == "auroc" or (is_auroc(column) and "_mlct" not in name)
        multiclass = "global_logit" not in a  # its classes are given as findings
        if multiclass and name == "auc":
            binary = False  # the macro over the classes: a paired bootstrap
        elif multiclass and name in _GLOBAL:
            return None  # no global label's scores
        if binary and name not in _GLOBAL:  # one finding's AUROC
            names = [str(n) for n in a.get("finding_names", [])]
            finding = name.removeprefix("auroc_")
            if finding not in names:
                return None
            j = names.index(finding)
            y, sa, sb = (
                a["finding_labels"][:, j],
                a["finding_logits"][:, j],
                b["finding_logits"][:, j],
            )
        elif not multiclass:
            y, sa, sb = a["global_label"], a["global_logit"], b["global_logit"]
        if binary:
            if min(int(np.sum(y == 1)), int(np.sum(y == 0))) < 2:
                return None
            return stats.delong_test(y, sa, sb)
        ones = np.ones((self.n_images, 1))
        if name.removesuffix("_at_val_thr") in RATES:
            return None  # thresholds are per seed: an ensemble has none
        da = self.values(self.counts, a, column, memo=(cell, "ensemble"))
        db = self.values(self.counts, b, column, memo=(baseline, "ensemble"))
        if da is None or db is None:
            return None
        observed = float(self.values(ones, a, column)[0] - self.values(ones, b, column)[0])
        return stats.PairedTest(
            observed, stats.paired_bootstrap_p(da - db, observed), "paired bootstrap"
        )
