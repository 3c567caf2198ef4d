"""Patient-grouped validation splits: no patient ever has images in two splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainables.data.store import DatasetError


def grouped_validation(
    rows: pd.DataFrame, *, fraction: float, seed: int, pool: str = "train"
) -> pd.DataFrame:
    """Move about ``fraction`` of the ``pool`` split's patients to ``val``.

    Rows whose ``patient_id`` is null count as their own patient. The choice depends only on
    the set of patient ids and ``seed``, not on row order.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be in (0, 1), got {fraction}")
    rows = rows.copy()
    in_pool = rows["split"] == pool
    groups = rows["patient_id"].where(rows["patient_id"].notna(), "img:" + rows["image_id"])
    patients = np.array(sorted(groups[in_pool].astype(str).unique()))
    if len(patients) < 2:
        raise DatasetError(
            f"cannot split a validation set from {len(patients)} patient(s) in {pool!r}"
        )
    rng = np.random.default_rng(seed)
    n_val = min(max(1, round(fraction * len(patients))), len(patients) - 1)
    chosen = set(rng.permutation(patients)[:n_val])
    rows.loc[in_pool & groups.astype(str).isin(chosen), "split"] = "val"
    return rows


def assert_patient_disjoint(rows: pd.DataFrame) -> None:
    """Raise if any (non-null) patient appears in more than one split."""
    known = rows[rows["patient_id"].notna()]
    per_patient = known.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise DatasetError(
            f"{len(leaked)} patient(s) appear in several splits, e.g. {leaked.index[:5].tolist()}"
        )
