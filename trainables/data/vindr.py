"""VinDr-CXR importer (PhysioNet release): DICOM or PNG images + three-reader image labels.

Layout read (as published)::

    SRC/train/<image_id>.dicom   15,000 training images (JPEG 2000 DICOM; a PNG export
    SRC/test/<image_id>.dicom     3,000 test images      <image_id>.png may replace any file)
    SRC/annotations/image_labels_train.csv   image_id, rad_id, 28 labels: 3 rows per image
    SRC/annotations/image_labels_test.csv    image_id, 28 labels: one consensus row per image

The test CSV spells "Other disease"; it is stored as the train CSV's "Other diseases".
Training labels combine the readers with ``label_rule``; the official test split is kept as
is; validation is split from train per image (VinDr publishes no patient ids).

Reader identity leaks the label: the films read by R8, R9 and R10 are about 25% normal, those
of other triplets about 97%. A per-image split drawn at random could give validation another
mix of triplets, hence of labels and of reading styles, than training; so validation is
stratified by (reader triplet, abnormal), the strata too small to expect a validation image
of their own pooled into one "other triplets" stratum per label
(:func:`trainables.data.splits.stratified_validation`). Reader ids only choose the split: they
are neither a label nor a metadata column, so they never reach a model.

Every path read must be a real file or folder, not a symbolic link
(:func:`trainables.data.source_tree.refuse_symlinks`).

Privacy: only the image id, the file path and the display fields of
:data:`trainables.data.dicom.HEADER_FIELDS` are kept; no other header value is read out.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkd.trainables.data.dicom import HEADER_FIELDS, decode_dicom, decoder_problem, read_header
from cxrkd.trainables.data.import_plan import ImportPlan
from cxrkd.trainables.data.jpeg import decode_image_file
from cxrkd.trainables.data.source_tree import refuse_symlinks
from cxrkd.trainables.data.splits import min_stratum_size, stratified_validation
from cxrkd.trainables.data.store import DatasetError

LOCAL_LABELS = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
)
GLOBAL_LABELS = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
SOURCE_LABELS = (*LOCAL_LABELS, *GLOBAL_LABELS)
ABNORMAL = "abnormal"  # derived: 1 - "No finding"
LABELS = (*SOURCE_LABELS, ABNORMAL)
SPELLINGS = {"Other disease": "Other diseases"}  # the test CSV's spelling -> the stored one
LABEL_RULES = ("majority", "any")
IMAGE_SUFFIXES = {".dicom": "dicom", ".dcm": "dicom", ".png": "png"}
SPLITS = ("train", "test")  # the published splits, each a folder of images
TRAIN_CSV = "annotations/image_labels_train.csv"
TEST_CSV = "annotations/image_labels_test.csv"
_PROBE_FILES = 3  # DICOMs decoded up front: one clear error instead of thousands of skips
OTHER_TRIPLETS = "other triplets"  # the pooled stratum of triplets with too few films
# 2: validation stratified by (reader triplet, abnormal); version 1 drew it at random. Bump
# when a change alters which rows, ids or splits an import keeps, so --exist-ok does not reuse
# an older store.
IMPORTER_VERSION = 2


def plan_vindr(
    src: str,
    *,
    name: str | None = None,
    label_rule: str = "majority",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImportPlan:
    """Plan a VinDr-CXR import; raises :class:`DatasetError` (before writing) on bad input."""
    if label_rule not in LABEL_RULES:
        raise DatasetError(
            f"label_rule must be one of {LABEL_RULES}, got {label_rule!r}: 'majority' keeps a "
            "training label that more than half of the readers marked, 'any' one that any marked"
        )
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(
            f"val_fraction must be in (0, 1), got {val_fraction}; e.g. 0.1 moves about 10% of "
            "the train images to validation"
        )
    root = Path(src).expanduser().resolve()
    _require_layout(root)
    refuse_symlinks(root, [root / p for p in ("annotations", TRAIN_CSV, TEST_CSV, *SPLITS)])
    train_labels = _read_labels(root / TRAIN_CSV, readers=True)
    train = combine_readers(train_labels, rule=label_rule)
    test = _read_labels(root / TEST_CSV, readers=False)
    test["n_readers"] = pd.NA  # a consensus, not a count of readers
    both = sorted(set(train["image_id"]) & set(test["image_id"]))
    if both:
        raise DatasetError(
            f"{len(both)} image id(s) are labelled in both {TRAIN_CSV} and {TEST_CSV}, e.g. "
            f"{both[:5]}; restore the published CSVs"
        )
    notes = []
    parts = []
    for split, labels in zip(SPLITS, (train, test), strict=True):
        files, both_formats = _find_images(root, split)
        if both_formats:
            notes.append(f"{both_formats} {split} image(s) exist as DICOM and PNG; used the DICOM")
        parts.append(_match(labels, files, split))
    rows = pd.concat(parts, ignore_index=True)
    rows["n_readers"] = rows["n_readers"].astype("Int8")
    rows = _add_headers(rows)
    _check_decodable(rows)
    rows, split_note = _split_validation(
        rows, reader_triplets(train_labels), fraction=val_fraction, seed=seed
    )
    notes.append(
        f"training labels: {label_rule} of the readers; test labels: the published consensus"
    )
    notes.append(split_note)
    default = "vindr-cxr" if label_rule == "majority" else f"vindr-cxr-{label_rule}"
    return ImportPlan(
        name=name or default,
        kind="vindr",
        task="multilabel",
        labels=list(LABELS),
        finding_labels=list(LOCAL_LABELS),
        global_label=ABNORMAL,
        rows=rows,
        decode=decode_vindr,
        synthetic=False,
        source=str(root),
        options={
            "label_rule": label_rule,
            "val_fraction": val_fraction,
            "seed": seed,
            "importer_version": IMPORTER_VERSION,
        },
        notes=notes,
    )


def combine_readers(labels: pd.DataFrame, *, rule: str) -> pd.DataFrame:
    """One row per image from one row per (image, reader).

    ``majority``: a label is 1 when strictly more than half of the image's readers marked it
    (2 of the usual 3). ``any``: when at least one reader did; "No finding" then needs every
    reader's agreement, so ``abnormal`` means "some reader saw something".
    """
    if rule not in LABEL_RULES:
        raise DatasetError(f"label_rule must be one of {LABEL_RULES}, got {rule!r}")
    grouped = labels.groupby("image_id", sort=True)[list(SOURCE_LABELS)]
    votes, readers = grouped.sum(), grouped.size()
    if rule == "majority":
        combined = (2 * votes).gt(readers, axis=0)
    else:
        combined = votes.gt(0)
        combined["No finding"] = votes["No finding"].eq(readers)
    out = combined.astype(np.int8).reset_index()
    out[ABNORMAL] = (1 - out["No finding"]).astype(np.int8)
    out["n_readers"] = readers.to_numpy()
    return out


def reader_triplets(labels: pd.DataFrame) -> pd.Series:
    """``image_id -> "R10+R8+R9"``: the image's readers, sorted as strings and joined."""
    return labels.groupby("image_id", sort=True)["rad_id"].agg(
        lambda ids: "+".join(sorted(ids.astype(str)))
    )


def _split_validation(
    rows: pd.DataFrame, triplets: pd.Series, *, fraction: float, seed: int
) -> tuple[pd.DataFrame, str]:
    """Validation from train, stratified by (reader triplet, abnormal); the triplet stays out
    of ``rows`` (it leaks the label, see the module docstring)."""
    triplet = rows["image_id"].map(triplets)
    abnormal = rows[ABNORMAL].astype(str)
    rows, strata = stratified_validation(
        rows,
        strata=triplet + " | abnormal=" + abnormal,
        pooled=OTHER_TRIPLETS + " | abnormal=" + abnormal,
        fraction=fraction,
        seed=seed,
    )
    pool = rows[rows["split"] != "test"]
    return rows, (
        f"VinDr-CXR has no patient ids (patient_id null): validation is "
        f"{int((pool['split'] == 'val').sum())} of {len(pool)} train images, drawn per image "
        "and stratified by (reader triplet, abnormal) so that it holds the same mix of readers "
        f"and labels as train (reader identity leaks the label): {len(strata)} strata, those "
        f"of fewer than {min_stratum_size(fraction)} films pooled per label into "
        f"'{OTHER_TRIPLETS}'; each stratum gives its share of validation, rounded by largest "
        f"remainder (val_fraction={fraction}, seed={seed}); reader ids are not stored"
    )


def decode_vindr(row: dict, size: int) -> tuple[np.ndarray, int, int]:
    """Writer decoder: a DICOM (windowed, MONOCHROME1 inverted) or a PNG export."""
    if row["format"] == "png":
        return decode_image_file(row, size)  # 16-bit exports are min-max scaled
    return decode_dicom(row, size)


def _require_layout(root: Path) -> None:
    if not root.is_dir():
        raise DatasetError(
            f"VinDr-CXR folder {root} does not exist; pass the folder that holds "
            "train/, test/ and annotations/ (the PhysioNet download)"
        )
    missing = [
        p for p in ("annotations", TRAIN_CSV, TEST_CSV, "train", "test") if not (root / p).exists()
    ]
    if missing:
        raise DatasetError(
            f"{root} is not a VinDr-CXR folder: missing {missing}. Expected the PhysioNet layout "
            f"train/<image_id>.dicom, test/<image_id>.dicom, {TRAIN_CSV}, {TEST_CSV}"
        )


def _read_labels(path: Path, *, readers: bool) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "rad_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"cannot read {path} as CSV ({exc}); restore the published file"
        ) from exc
    frame = frame.rename(columns=lambda c: SPELLINGS.get(c.strip(), c.strip()))
    wanted = ["image_id", *(["rad_id"] if readers else []), *SOURCE_LABELS]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path} lacks column(s) {missing}; expected {wanted} (the published VinDr-CXR "
            "image-label CSV)"
        )
    frame = frame[wanted]
    values = frame[list(SOURCE_LABELS)].apply(pd.to_numeric, errors="coerce")
    bad = [c for c in SOURCE_LABELS if not values[c].isin((0, 1)).all()]
    if bad:
        raise DatasetError(f"{path}: label column(s) {bad} hold values other than 0 and 1")
    frame[list(SOURCE_LABELS)] = values.astype(np.int8)
    if frame["image_id"].isna().any():
        raise DatasetError(f"{path} has rows without an image_id; restore the published file")
    if not readers and frame["image_id"].duplicated().any():
        dupes = frame["image_id"][frame["image_id"].duplicated()].unique()[:5].tolist()
        raise DatasetError(f"{path} should hold one row per image; repeated ids e.g. {dupes}")
    if not readers:
        frame[ABNORMAL] = (1 - frame["No finding"]).astype(np.int8)
    return frame


def _find_images(root: Path, split: str) -> tuple[dict[str, tuple[str, str]], int]:
    """``{image_id: (path, format)}`` in ``root/split`` and how many ids had both a DICOM and
    a PNG; refuses symbolic links (see the module docstring)."""
    folder = root / split
    found: dict[str, tuple[str, str]] = {}
    both = 0
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    refuse_symlinks(root, [Path(e.path) for e in entries])
    for entry in entries:
        stem, suffix = os.path.splitext(entry.name)
        kind = IMAGE_SUFFIXES.get(suffix.lower())
        if kind is None or entry.name.startswith(".") or not entry.is_file():
            continue
        if stem in found:  # keep the first DICOM: the original data, not an export
            both += found[stem][1] != kind
            if found[stem][1] == "dicom":
                continue
        found[stem] = (str(folder / entry.name), kind)
    return found, both


def _match(labels: pd.DataFrame, files: dict, split: str) -> pd.DataFrame:
    ids = set(labels["image_id"])
    unlabelled = sorted(set(files) - ids)
    if unlabelled:
        raise DatasetError(
            f"{len(unlabelled)} image(s) in {split}/ have no row in the {split} label CSV, e.g. "
            f"{unlabelled[:5]}; remove them or restore the published CSV"
        )
    no_file = sorted(ids - set(files))
    if no_file:
        raise DatasetError(
            f"{len(no_file)} image id(s) in the {split} label CSV have no file "
            f"{split}/<image_id>.dicom (or .png), e.g. {no_file[:5]}; finish the download or "
            "restore the missing files"
        )
    rows = labels.copy()
    rows["source_path"] = [files[i][0] for i in rows["image_id"]]
    rows["format"] = [files[i][1] for i in rows["image_id"]]
    rows["patient_id"] = None
    rows["split"] = split
    return rows


def _add_headers(rows: pd.DataFrame) -> pd.DataFrame:
    """The display fields of each DICOM (None for PNGs and for files that cannot be parsed:
    the writer lists those as unreadable)."""
    records = []
    for path, kind in zip(rows["source_path"], rows["format"], strict=True):
        header = dict.fromkeys(HEADER_FIELDS)
        if kind == "dicom":
            with contextlib.suppress(Exception):  # the writer reports the file as unreadable
                header = read_header(path)
        records.append(header)
    headers = pd.DataFrame.from_records(records, columns=list(HEADER_FIELDS), index=rows.index)
    headers["bits_stored"] = headers["bits_stored"].astype("Int8")
    # rows/cols duplicate orig_height/orig_width, which the writer adds from the pixels
    return pd.concat([rows, headers.drop(columns=["rows", "cols"])], axis=1)


def _check_decodable(rows: pd.DataFrame) -> None:
    dicoms = rows[rows["format"] == "dicom"]
    for syntax, count in dicoms["transfer_syntax"].dropna().value_counts().items():
        problem = decoder_problem(str(syntax))
        if problem:
            raise DatasetError(f"{count} DICOM file(s) cannot be decoded: {problem}")
    errors = []
    for row in dicoms.head(_PROBE_FILES).to_dict("records"):
        try:
            decode_dicom(row, 64)  # small: JPEG 2000 decodes at reduced scale
            return
        except Exception as exc:  # any failure: summarised below
            errors.append(f"{Path(row['source_path']).name}: {type(exc).__name__}: {exc}"[:300])
    if errors:
        raise DatasetError(
            f"the first {len(errors)} DICOM file(s) could not be decoded:\n  "
            + "\n  ".join(errors)
            + "\nCheck that pydicom and its codecs are installed (pip install pydicom pylibjpeg "
            "pylibjpeg-openjpeg) and that the files are intact"
        )
