"""Validation splits: patient-grouped (no patient in two splits) or, for sources without
patient ids, per image and stratified (validation looks like training stratum by stratum)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrkd.trainables.data.store import DatasetError


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


def min_stratum_size(fraction: float) -> int:
    """The fewest rows a stratum needs to expect at least one validation row of its own."""
    return math.ceil(1 / fraction - 1e-9)  # 1 / 0.1 may come out a hair above 10


def stratified_validation(
    rows: pd.DataFrame,
    *,
    strata: pd.Series,
    pooled: pd.Series,
    fraction: float,
    seed: int,
    pool: str = "train",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Move ``fraction`` of the ``pool`` split's rows (images) to ``val``, stratum by stratum.

    ``strata`` and ``pooled`` are aligned with ``rows``: each row's stratum key, and the coarser
    key it falls back to when its stratum is too small to be represented on its own (fewer
    than :func:`min_stratum_size` rows in the pool: an expected share of validation under one
    image). The total is the grouped split's ``round(fraction * n)`` (at least 1, at most
    ``n - 1``); it is shared out with the largest-remainder method: every stratum gets the floor
    of its exact share ``n_s * n_val / n`` and the seats left go to the largest remainders (exact
    integer arithmetic; ties broken by ``seed``), so no stratum is more than one image off its
    share. Members are drawn by ``seed`` from the stratum's image ids in sorted order: the
    split depends only on the ids, their keys and ``seed``, not on row order. Returns the rows
    and ``{stratum: size in the pool}`` of the strata used, for the import notes.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be in (0, 1), got {fraction}")
    rows = rows.copy()
    in_pool = rows["split"] == pool
    n = int(in_pool.sum())
    if n < 2:
        raise DatasetError(f"cannot split a validation set from {n} image(s) in {pool!r}")
    keys = strata[in_pool].astype(str)
    sizes = keys.value_counts()
    small = keys.map(sizes).lt(min_stratum_size(fraction))
    keys = keys.where(~small, pooled[in_pool].astype(str))
    members = {
        key: sorted(rows.loc[group.index, "image_id"].astype(str))
        for key, group in keys.groupby(keys, sort=True)
    }
    n_val = min(max(1, round(fraction * n)), n - 1)
    order = sorted(members)
    exact = {key: len(members[key]) * n_val for key in order}  # share times n: integers
    seats = {key: exact[key] // n for key in order}
    rng = np.random.default_rng(seed)
    tie_break = dict(zip(order, rng.permutation(len(order)), strict=True))
    by_remainder = sorted(order, key=lambda key: (-(exact[key] % n), tie_break[key]))
    for key in by_remainder[: n_val - sum(seats.values())]:
        seats[key] += 1
    chosen = set()
    for key in order:
        chosen.update(rng.permutation(np.array(members[key], dtype=object))[: seats[key]])
    rows.loc[in_pool & rows["image_id"].astype(str).isin(chosen), "split"] = "val"
    return rows, {key: len(members[key]) for key in order}


def assert_patient_disjoint(rows: pd.DataFrame) -> None:
    """Raise if any (non-null) patient appears in more than one split."""
    known = rows[rows["patient_id"].notna()]
    per_patient = known.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise DatasetError(
            f"{len(leaked)} patient(s) appear in several splits, e.g. {leaked.index[:5].tolist()}"
        )
