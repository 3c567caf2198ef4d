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

from cxrkd.trainables.data.vindr import GLOBAL_LABELS, LOCAL_LABELS

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
    root: str | Path,
    *,
    train: dict[str, list[list[str]]],
    test: dict[str, list[str]],
    rad_ids: dict[str, list[str]] | None = None,
) -> None:
    """``annotations/image_labels_{train,test}.csv`` as published (see write_vindr_tree).

    ``rad_ids`` names each train image's readers in order (default R1, R2, R3, ...).
    """
    root = Path(root)
    rad_ids = rad_ids or {}
    train_rows = [
        {
            "rad_id": rad_ids[image_id][r] if image_id in rad_ids else f"R{r + 1}",
            **label_rows(image_id, positives, TRAIN_LABELS),
        }
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


# --- a larger, learnable VinDr-style tree (SYNTHETIC), for end-to-end runs -------------------

# Findings drawn by write_vindr_learnable_tree, with their weight among abnormal films and the
# global label each one implies.
LEARNABLE_FINDINGS = {
    "Lung Opacity": (3, None),
    "Consolidation": (2, "Pneumonia"),
    "Pleural effusion": (2, None),
    "Cardiomegaly": (2, None),
    "Nodule/Mass": (1, "Lung tumor"),
    "Aortic enlargement": (1, None),
}
LEAKY_TRIPLET = ("R8", "R9", "R10")  # reads most abnormal films, as in the real set


def draw_findings(
    values: np.ndarray, findings: list[str], rng: np.random.Generator, *, top: int
) -> np.ndarray:
    """Add bright (high stored value) signs of ``findings`` to a :func:`chest_values` image."""
    rows, cols = values.shape
    yy, xx = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    out = values.astype(np.float64)

    def blob(cx, cy, r, amount):
        return amount * top * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))

    for finding in findings:
        side = rng.choice((0.3, 0.7))
        if finding == "Lung Opacity":
            out += blob(side + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.6), 0.08, 0.45)
        elif finding == "Consolidation":
            out += blob(side, rng.uniform(0.45, 0.65), 0.12, 0.5)
        elif finding == "Pleural effusion":  # the lung base fills from below
            base = (np.abs(xx - side) < 0.16) & (yy > 0.62 + rng.uniform(0, 0.06))
            out[base] += 0.5 * top
        elif finding == "Cardiomegaly":  # a wide bright heart over the inner lung edges
            out[((xx - 0.52) / 0.24) ** 2 + ((yy - 0.66) / 0.17) ** 2 < 1] += 0.35 * top
        elif finding == "Nodule/Mass":
            out += blob(side + rng.uniform(-0.04, 0.04), rng.uniform(0.3, 0.6), 0.035, 0.6)
        elif finding == "Aortic enlargement":
            out += blob(0.44, 0.22, 0.06, 0.5)
        else:
            raise ValueError(f"no drawing for {finding!r}; use {sorted(LEARNABLE_FINDINGS)}")
    return out.clip(0, top)


def _readers(truth: list[str], rng: np.random.Generator) -> list[list[str]]:
    """Three readers whose majority is ``truth``; one of them may miss or over-call."""
    readers = [list(truth), list(truth), list(truth)]
    odd = int(rng.integers(3))
    if truth and rng.random() < 0.25:
        readers[odd] = truth[:1] if len(truth) > 1 else []  # a finding missed
    elif not truth and rng.random() < 0.15:
        readers[odd] = ["Other lesion"]  # one reader's call: not the majority's
    return readers


def _triplet(abnormal: bool, rng: np.random.Generator) -> list[str]:
    if abnormal and rng.random() < 0.7:
        return list(LEAKY_TRIPLET)
    others = [f"R{k}" for k in range(1, 18) if f"R{k}" not in LEAKY_TRIPLET]
    return [str(r) for r in rng.choice(others, 3, replace=False)]


def write_vindr_learnable_tree(
    root: str | Path,
    *,
    n_train: int = 160,
    n_test: int = 48,
    abnormal_fraction: float = 0.35,
    shape: tuple[int, int] = (72, 64),
    image_format: str = "dicom",
    seed: int = 0,
) -> Path:
    """Write a VinDr-CXR-style folder of SYNTHETIC films (not real patients); return ``root``.

    The PhysioNet layout and CSVs of :func:`write_vindr_tree`, with ``n_train`` train films
    (three readers each, with the real ``rad_id`` values R1-R17) and ``n_test`` test films (one
    consensus row each). About ``abnormal_fraction`` of the films show one or two of
    :data:`LEARNABLE_FINDINGS` as bright shapes in or beside the lungs (a signal a small CNN
    learns in a few steps at 32-64 px); the others are clean. Readers agree by majority, so
    ``majority`` labels are the drawn truth; under ``any`` some normal films become abnormal
    ("Other lesion"). As in the real set, most abnormal train films are read by the triplet
    R8/R9/R10. Sizes vary around ``shape`` (rows, cols); every tenth film is MONOCHROME1.
    ``image_format``: ``dicom`` (JPEG 2000, about 20 ms a film to write) or ``png`` (8-bit
    exports, faster). Image ids are 32 hex digits, like the real ones.
    """
    if image_format not in ("dicom", "png"):
        raise ValueError(f"image_format must be 'dicom' or 'png', got {image_format!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = list(LEARNABLE_FINDINGS)
    weights = np.array([w for w, _ in LEARNABLE_FINDINGS.values()], dtype=float)
    train, test, rad_ids = {}, {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        for k in range(n):
            image_id = rng.bytes(16).hex()
            truth = []
            if rng.random() < abnormal_fraction:
                count = int(rng.integers(1, 3))
                truth = sorted(rng.choice(names, count, replace=False, p=weights / weights.sum()))
                truth += sorted({g for f in truth if (g := LEARNABLE_FINDINGS[f][1])})
            rows, cols = (int(v + rng.integers(-8, 9)) for v in shape)
            top = 4095 if image_format == "dicom" else 255
            values = chest_values(rows, cols, bits=12 if top == 4095 else 8)
            values = draw_findings(values, [t for t in truth if t in names], rng, top=top)
            values = (values + rng.normal(0, 0.015 * top, values.shape)).clip(0, top)
            _write_film(root / split, image_id, values, image_format, mono1=k % 10 == 9)
            if split == "train":
                train[image_id] = _readers(truth, rng)
                rad_ids[image_id] = _triplet(bool(truth), rng)
            else:
                test[image_id] = truth
    write_label_csvs(root, train=train, test=test, rad_ids=rad_ids)
    return root


def _write_film(folder: Path, image_id: str, values: np.ndarray, fmt: str, *, mono1: bool):
    if fmt == "png":
        write_png(folder / f"{image_id}.png", values.round().astype(np.uint8))
        return
    stored = values.round().astype(np.uint16)
    write_dicom(
        folder / f"{image_id}.dicom",
        4095 - stored if mono1 else stored,
        photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
        window=(2048.0, 4096.0),
    )
