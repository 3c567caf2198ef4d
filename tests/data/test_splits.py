"""Validation splits: the stratified per-image split (largest remainder, pooled small strata,
determinism) and the patient-grouped one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrkd.trainables.data.splits import (
    grouped_validation,
    min_stratum_size,
    stratified_validation,
)
from cxrkd.trainables.data.store import DatasetError

# 100 train images: stratum A 47, B 31, then 22 singletons pooled into "rest"; 5 test images.
STRATA = ["A"] * 47 + ["B"] * 31 + [f"s{k}" for k in range(22)] + ["T"] * 5


def _rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"img{k:03d}" for k in range(len(STRATA))],
            "split": ["train"] * 100 + ["test"] * 5,
            "stratum": STRATA,
            "patient_id": None,
        }
    )


def _split(rows: pd.DataFrame, *, fraction: float = 0.1, seed: int = 0):
    return stratified_validation(
        rows,
        strata=rows["stratum"],
        pooled=pd.Series("rest", index=rows.index),  # used by the strata too small alone
        fraction=fraction,
        seed=seed,
    )


def test_each_stratum_gets_its_share_by_largest_remainder():
    rows, strata = _split(_rows(), fraction=0.1)
    assert strata == {"A": 47, "B": 31, "rest": 22}  # the singletons were pooled
    val = rows[rows["split"] == "val"]
    counts = val["stratum"].where(~val["stratum"].str.startswith("s"), "rest").value_counts()
    # exact shares 4.7, 3.1, 2.2 of 10: floors 4 + 3 + 2 = 9, the one seat left to A (.7)
    assert counts.to_dict() == {"A": 5, "B": 3, "rest": 2}
    assert (rows.loc[rows["stratum"] == "T", "split"] == "test").all()  # test untouched


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.34, 0.5])
def test_total_matches_the_fraction_and_no_stratum_is_an_image_off(fraction):
    rows, strata = _split(_rows(), fraction=fraction)
    n_val = int((rows["split"] == "val").sum())
    assert n_val == round(fraction * 100)
    keys = rows["stratum"].where(~rows["stratum"].str.startswith("s"), "rest")
    for key, size in strata.items():
        got = int(((keys == key) & (rows["split"] == "val")).sum())
        assert abs(got - size * n_val / 100) < 1, (key, got)


def test_min_stratum_size():
    assert [min_stratum_size(f) for f in (0.1, 0.2, 0.3, 0.5, 0.34)] == [10, 5, 4, 2, 3]


def test_split_depends_on_ids_keys_and_seed_only():
    rows = _rows()
    shuffled = rows.sample(frac=1, random_state=1)
    val = set(_split(rows, seed=5)[0].query("split == 'val'")["image_id"])
    assert val == set(_split(shuffled, seed=5)[0].query("split == 'val'")["image_id"])
    assert val != set(_split(rows, seed=6)[0].query("split == 'val'")["image_id"])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, np.nan])
def test_bad_fraction_is_refused(fraction):
    with pytest.raises(DatasetError, match="validation fraction must be in"):
        _split(_rows(), fraction=fraction)


def test_grouped_validation_keeps_patients_together():
    rows = _rows().assign(patient_id=[f"p{k // 3}" for k in range(105)])
    out = grouped_validation(rows, fraction=0.2, seed=0)
    in_val = out.loc[out["split"] == "val", "patient_id"]
    in_train = out.loc[out["split"] == "train", "patient_id"]
    assert len(in_val) and not set(in_val) & set(in_train)
