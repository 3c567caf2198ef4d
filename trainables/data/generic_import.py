"""What the generic importers (``folder``, ``csv``) share: store names, the normal-class rule,
and how the splits the source does not give are drawn.

Splits (:func:`assign_splits`). A source may name a split per image (``train/``, ``val/``,
``test/`` folders; a ``split`` column) or leave it out. Explicit ``val`` and ``test`` images are
kept as they are. ``train`` images and images without a split form the pool:

- if the source has no test split, a test split of ``test_fraction`` (default 0.15) of the pool
  is drawn (every study ends by scoring its chosen models on test, so a store without one
  could not finish a study); a source with its own test split refuses ``test_fraction``;
- if the source has no val split, ``val_fraction`` (default 0.1) of the pool is drawn (of the
  whole pool: ``val_fraction / (1 - test_fraction)`` of what is left after test);
- the rest is train.

With patient ids the draws are grouped by patient (:func:`trainables.data.splits.
grouped_validation`; an image without an id counts as its own patient), and an image without
a split joins the explicit split of its patient's other images; a patient with images in two
explicit splits is refused. Without patient ids the draws are per image, stratified by the
global label (:func:`trainables.data.splits.stratified_validation`), and a note says that images
of one patient may land on both sides. Both helpers depend only on the ids and ``seed``: a
re-import gives the same splits.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrkd.trainables.data.image_files import shown
from cxrkd.trainables.data.splits import grouped_validation, stratified_validation
from cxrkd.trainables.data.store import NAME_PATTERN, DatasetError

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.15
# Names (case, '-', '_' and spaces ignored) that mark the normal class of a binary folder
# dataset or a multi-label CSV's "no finding" column.
NORMAL_NAMES = ("normal", "negative", "neg", "0", "healthy", "no finding", "nofinding")
ABNORMAL = "abnormal"  # the derived global label of a multi-label import


def is_normal_name(name: str) -> bool:
    return re.sub(r"[-_\s]+", " ", str(name)).strip().lower() in NORMAL_NAMES


def default_name(path: Path, what: str) -> str:
    """The store name derived from the source (a folder's or a file's name)."""
    name = path.name if path.is_dir() else path.stem
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise DatasetError(
            f"cannot name the store after {what} {name!r} (a store name uses letters, digits, "
            "'.', '_' and '-'); pass --name NAME"
        )
    return name


def check_fractions(val_fraction: float | None, test_fraction: float | None) -> None:
    val = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    test = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise DatasetError(
            f"--val-fraction {val} and --test-fraction {test} must each be in (0, 1) with a sum "
            "below 1, e.g. --val-fraction 0.1 --test-fraction 0.15"
        )


def assign_splits(
    rows: pd.DataFrame,
    *,
    stratum: str,
    val_fraction: float | None,
    test_fraction: float | None,
    seed: int,
) -> tuple[pd.DataFrame, list[str]]:
    """Fill in ``rows["split"]`` (None: not given) as the module docstring says; ``stratum``
    is the label column the per-image draws are stratified by. Returns rows and notes."""
    rows = rows.copy()
    notes = [*_patients_follow_their_split(rows)]
    rows["split"] = rows["split"].fillna("train")
    given = {s: int((rows["split"] == s).sum()) for s in ("val", "test")}
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction is not None and given[split]:
            raise DatasetError(
                f"the source has its own {split} split ({given[split]} images), so there is no "
                f"{split} split to draw: drop --{split}-fraction (it applies only to sources "
                f"without a {split} split)"
            )
    test = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    val = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    by_patient = bool(rows["patient_id"].notna().any())
    n_pool = int((rows["split"] == "train").sum())
    if given["test"]:
        notes.append(f"kept the source's test split ({given['test']} images) as it is")
    else:
        rows = _draw(rows, "test", test, seed, stratum, by_patient)
    if given["val"]:
        notes.append(f"kept the source's val split ({given['val']} images) as it is")
    else:
        share = val if given["test"] else val / (1 - test)  # of the pool left after test
        rows = _draw(rows, "val", share, seed, stratum, by_patient)
    drawn = [s for s in ("test", "val") if not given[s]]
    if drawn:
        fractions = {"test": f"test_fraction={test}", "val": f"val_fraction={val}"}
        counts = ", ".join(f"{s} {int((rows['split'] == s).sum())}" for s in drawn)
        how = (
            "grouped by patient (an image without a patient_id counts as its own patient)"
            if by_patient
            else f"per image, stratified by {stratum!r}: there are no patient ids, so images "
            "of one patient may land on both sides (a CSV with a patient_id column groups them)"
        )
        notes.append(
            f"drew {' and '.join(drawn)} from the {n_pool} train/unsplit images ({counts}), "
            f"{how}; {', '.join(fractions[s] for s in drawn)}, seed={seed}"
        )
    return rows, notes


def _patients_follow_their_split(rows: pd.DataFrame) -> list[str]:
    """Refuse a patient in two explicit splits; an unsplit image of a patient with an explicit
    val or test split joins it (in place). Returns notes."""
    known = rows[rows["split"].notna() & rows["patient_id"].notna()]
    per_patient = known.groupby("patient_id")["split"].agg(lambda s: sorted(set(s)))
    leaked = per_patient[per_patient.map(len) > 1]
    if len(leaked):
        examples = [f"{p} ({'/'.join(s)})" for p, s in leaked.items()]
        raise DatasetError(
            f"{len(leaked)} patient(s) have images in two splits: {shown(examples)}; the "
            "images of one patient must all be in one split, or val and test scores count "
            "pictures of patients the model trained on. Give each of them one split (or leave "
            "the split empty for all their images and the importer draws one)"
        )
    held_out = per_patient[per_patient.map(lambda s: s[0] in ("val", "test"))].map(lambda s: s[0])
    joins = rows["split"].isna() & rows["patient_id"].isin(held_out.index)
    if not joins.any():
        return []
    rows.loc[joins, "split"] = rows.loc[joins, "patient_id"].map(held_out)
    return [
        f"{int(joins.sum())} image(s) without a split joined the val/test split of their "
        "patient's other images"
    ]


def _draw(rows, target, fraction, seed, stratum, by_patient) -> pd.DataFrame:
    """Move ``fraction`` of the train pool to ``target`` (the helpers draw "val": renamed)."""
    pool = rows[rows["split"] == "train"]
    groups = pool["patient_id"].where(pool["patient_id"].notna(), "img:" + pool["image_id"])
    if groups.nunique() < 2:
        unit = "patient(s)" if by_patient else "image(s)"
        raise DatasetError(
            f"cannot draw a {target} split from {groups.nunique()} {unit} left in train; add "
            f"images, or give the source its own {target} split"
        )
    part = pool[["image_id", "patient_id", "split"]]
    if by_patient:
        part = grouped_validation(part, fraction=fraction, seed=seed)
    else:
        part, _ = stratified_validation(
            part,
            strata=pool[stratum],
            pooled=pd.Series("all", index=pool.index),
            fraction=fraction,
            seed=seed,
        )
    rows.loc[part.index[part["split"] == "val"], "split"] = target
    return rows


def require_both_classes(rows: pd.DataFrame, label: str, *, fix: str) -> None:
    """Every split needs positive and negative images of ``label`` (AUC, the validation
    threshold and the test scores are undefined otherwise)."""
    for split in ("test", "val", "train"):  # a source's own split first: its fix differs
        values = set(rows.loc[rows["split"] == split, label])
        if values != {0, 1}:
            have = "no images" if not values else f"only {label}={values.pop()} images"
            raise DatasetError(
                f"the {split} split has {have}; every split needs images with {label}=1 and "
                f"{label}=0 (scores and the validation threshold are undefined otherwise); {fix}"
            )


def require_every_class(rows: pd.DataFrame, classes: list[str], *, fix: str) -> None:
    """Every split of a multi-class import needs images of every class (a class absent from
    train is never learnt; from val or test, its one-vs-rest AUROC is undefined there)."""
    for split in ("test", "val", "train"):
        have = set(rows.loc[rows["split"] == split, "class"])
        missing = [c for c in classes if c not in have]
        if missing:
            raise DatasetError(
                f"the {split} split has no images of class(es) {missing} (of {classes}); every "
                f"split needs images of every class (the one-vs-rest AUROC of a class is "
                f"undefined without them); {fix}"
            )
