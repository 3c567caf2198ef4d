"""Fixture writers for the DICOM / VinDr-CXR tests and the import benchmark.

Every DICOM written here carries identifying tags with distinctive values
(:data:`IDENTIFYING`), so a test can check that none of them reaches a dataset store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from trainables.data.vindr import GLOBAL_LABELS, LOCAL_LABELS

# Values that must never leave the source files (checked byte for byte in the store).
IDENTIFYING = {
    "PatientName": "Quixwell^Zebadiah",
    "PatientID": "PID8472QXV",
    "PatientBirthDate": "19230817",
    "PatientAddress": "12 Harrowgate Lane",
    "InstitutionName": "Saint Vexwold Infirmary",
    "InstitutionAddress": "Vexwold Road 99",
    "ReferringPhysicianName": "Drumlin^Oswyth",
    "StudyDate": "20190423",
    "SeriesDate": "20190424",
    "AccessionNumber": "ACC5519X73",
    "StudyID": "STY77331Q",
    "OtherPatientIDs": "OPI66120Z",
    "PatientAge": "093Y",
}
# The strings to search for: PN components are stored with their '^' separator.
IDENTIFYING_STRINGS = sorted(
    {part for value in IDENTIFYING.values() for part in value.split("^")}
    | set(IDENTIFYING.values())
)
TRAIN_LABELS = [*LOCAL_LABELS, *GLOBAL_LABELS]
TEST_LABELS = [("Other disease" if c == "Other diseases" else c) for c in TRAIN_LABELS]


def chest_values(rows: int, cols: int, *, bits: int = 12, lungs_high: bool = False) -> np.ndarray:
    """A stored-value phantom: two elliptical lung fields on a mid-grey body, lungs at the low
    end of the range (MONOCHROME2) or at the high end (``lungs_high``, as MONOCHROME1 stores
    them)."""
    top = 2**bits - 1
    yy, xx = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    lung = ((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    lung |= ((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    values = np.full((rows, cols), top // 2, dtype=np.float64)
    values[lung] = top * (0.9 if lungs_high else 0.1)
    values += 0.02 * top * np.sin(xx * 9) * np.cos(yy * 7)  # texture, so the codec has work
    return values.clip(0, top).astype(np.uint16)


def lung_mask(rows: int, cols: int) -> np.ndarray:
    """Where :func:`chest_values` puts the lungs (centre regions, safely inside)."""
    yy, xx = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    inner = ((xx - 0.3) / 0.1) ** 2 + ((yy - 0.5) / 0.2) ** 2 < 1
    return inner | (((xx - 0.7) / 0.1) ** 2 + ((yy - 0.5) / 0.2) ** 2 < 1)


def write_dicom(
    path: str | Path,
    stored: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    window: tuple | None = None,
    rescale: tuple[float, float] | None = None,
    syntax: str = JPEG2000Lossless,
) -> Path:
    """Write ``stored`` (uint16 stored values) as a DX DICOM with identifying tags.

    ``window`` is ``(center, width)``, each a number or a list (multi-valued); ``rescale`` is
    ``(slope, intercept)``; ``syntax`` JPEG 2000 lossless (default), explicit little endian
    (uncompressed) or any other UID, for which the pixel data is a junk fragment (to test
    files whose codec is not installed).
    """
    path = Path(path)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint16).tobytes()
    if syntax == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    elif syntax != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\xd8not really compressed\xff\xd9"])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def label_rows(image_id: str, positives: list[str], columns: list[str]) -> dict:
    """One CSV row: 1 for each name in ``positives``; 'No finding' when there are none."""
    positives = positives or ["No finding"]
    unknown = set(positives) - set(columns)
    assert not unknown, f"fixture uses unknown labels {unknown}"
    return {"image_id": image_id, **{c: int(c in positives) for c in columns}}


def write_vindr_tree(
    root: str | Path,
    *,
    train: dict[str, list[list[str]]],
    test: dict[str, list[str]],
    formats: dict[str, str] | None = None,
    shape: tuple[int, int] = (48, 40),
) -> Path:
    """Write the PhysioNet layout: ``train/``, ``test/``, ``annotations/image_labels_*.csv``.

    ``train`` maps an image id to its readers' positive labels (one list per reader, ``[]``
    for "No finding"); ``test`` maps an image id to its consensus positives. ``formats`` picks
    per image: ``dicom`` (default: JPEG 2000, MONOCHROME2, 12-bit, windowed), ``mono1``
    (MONOCHROME1, lungs stored high), ``png`` (an 8-bit PNG export).
    """
    root = Path(root)
    formats = formats or {}
    for split, ids in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            kind = formats.get(image_id, "dicom")
            if kind == "png":
                lungs = chest_values(*shape, bits=8)
                write_png(root / split / f"{image_id}.png", lungs.astype(np.uint8))
                continue
            stored = chest_values(*shape, bits=12, lungs_high=kind == "mono1")
            write_dicom(
                root / split / f"{image_id}.dicom",
                stored,
                photometric="MONOCHROME1" if kind == "mono1" else "MONOCHROME2",
                window=([2048.0, 1500.0], [1000.0, 3000.0]),  # centres, widths
            )
    write_label_csvs(root, train=train, test=test)
    return root


def write_label_csvs(
    root: str | Path, *, train: dict[str, list[list[str]]], test: dict[str, list[str]]
) -> None:
    """``annotations/image_labels_{train,test}.csv`` as published (see write_vindr_tree)."""
    root = Path(root)
    train_rows = [
        {"rad_id": f"R{r + 1}", **label_rows(image_id, positives, TRAIN_LABELS)}
        for image_id, readers in train.items()
        for r, positives in enumerate(readers)
    ]
    frame = pd.DataFrame(train_rows, columns=["image_id", "rad_id", *TRAIN_LABELS])
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "annotations" / "image_labels_train.csv", index=False)
    spelled = {"Other diseases": "Other disease"}  # as the published test CSV spells it
    test_rows = [
        label_rows(i, [spelled.get(p, p) for p in positives], TEST_LABELS)
        for i, positives in test.items()
    ]
    frame = pd.DataFrame(test_rows, columns=["image_id", *TEST_LABELS])
    frame.to_csv(root / "annotations" / "image_labels_test.csv", index=False)
