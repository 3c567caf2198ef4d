"""MedMNIST importer: PneumoniaMNIST (binary) and ChestMNIST (14 findings), any image size.

A MedMNIST ``.npz`` holds ``{train,val,test}_{images,labels}``: uint8 images ``(n, H, W)`` or
``(n, H, W, C)`` and 0/1 labels ``(n, 1)`` (PneumoniaMNIST) or ``(n, 14)`` (ChestMNIST, in
ChestX-ray14's order). The official splits are kept as they are, val included.

The images are already decoded, so the "decoder" only reads row ``i`` of an array. Arrays
stored uncompressed inside the npz are memory-mapped in place; compressed ones are loaded
once per worker process (a small per-process cache keyed by file, so a chunk of 128 rows does
not decompress the array 128 times). A compressed 224-px ChestMNIST train split is ~4 GB
per worker then; pass fewer workers if memory is short.
"""

from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkd.trainables.data.import_plan import ImportPlan
from cxrkd.trainables.data.store import SPLITS, DatasetError

CHEST_LABELS = (
    "atelectasis",
    "cardiomegaly",
    "effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
    "consolidation",
    "edema",
    "emphysema",
    "fibrosis",
    "pleural",
    "hernia",
)
PNEUMONIA = "pneumonia"
ABNORMAL = "abnormal"  # ChestMNIST: any of the 14 findings
KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("images", "labels"))
SUPPORTED = ("pneumoniamnist", "chestmnist")
# The other 2-D MedMNIST sets: named so that e.g. BreastMNIST's (n, 1) 0/1 labels are not
# mistaken for pneumonia.
OTHER_FLAGS = (
    "pathmnist",
    "dermamnist",
    "octmnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)


def plan_medmnist(src: str, *, name: str | None = None) -> ImportPlan:
    """Plan a MedMNIST import; raises :class:`DatasetError` (before writing) on bad input."""
    path = Path(src).expanduser().resolve()
    if not path.is_file():
        raise DatasetError(
            f"MedMNIST file {path} does not exist; pass a .npz such as pneumoniamnist_64.npz"
        )
    flag = path.stem.lower().split("_")[0]
    if flag in OTHER_FLAGS:
        raise DatasetError(f"{path.name} is {flag}; only {SUPPORTED} are chest X-ray sets")
    members = _members(path)
    missing = [k for k in KEYS if k not in members]
    if missing:
        raise DatasetError(
            f"{path.name} lacks array(s) {missing}; a MedMNIST npz holds {list(KEYS)} "
            f"(found {sorted(members)})"
        )
    labels = _labels(path)
    widths = {lab.shape[1] if lab.ndim == 2 else -1 for lab in labels.values()}
    if widths not in ({1}, {len(CHEST_LABELS)}):
        raise DatasetError(
            f"{path.name}: label shapes {[labels[s].shape for s in SPLITS]} match no supported "
            f"set; expected (n, 1) for PneumoniaMNIST or (n, 14) for ChestMNIST"
        )
    parts = []
    for split in SPLITS:
        shape, dtype = _array_header(path, f"{split}_images")
        _check_images(path, split, shape, dtype)
        if labels[split].shape[0] != shape[0]:
            raise DatasetError(
                f"{path.name}: {split}_images holds {shape[0]} images but {split}_labels "
                f"{labels[split].shape[0]} rows; re-download the file"
            )
        parts.append(_rows(path, split, labels[split]))
    rows = pd.concat(parts, ignore_index=True)
    binary = widths == {1}
    names = [PNEUMONIA] if binary else [*CHEST_LABELS, ABNORMAL]
    return ImportPlan(
        name=name or path.stem,
        kind="medmnist",
        task="binary" if binary else "multilabel",
        labels=names,
        finding_labels=[] if binary else list(CHEST_LABELS),
        global_label=PNEUMONIA if binary else ABNORMAL,
        rows=rows,
        decode=decode_medmnist,
        synthetic=False,
        source=str(path),
        notes=["official MedMNIST splits (train/val/test) kept as published"],
    )


def _members(path: Path) -> set[str]:
    if not zipfile.is_zipfile(path):
        raise DatasetError(
            f"{path} is not an .npz file (not a zip archive); pass a MedMNIST "
            ".npz such as pneumoniamnist_64.npz"
        )
    with zipfile.ZipFile(path) as zf:
        return {n.removesuffix(".npy") for n in zf.namelist()}


def _labels(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = {s: np.asarray(npz[f"{s}_labels"]) for s in SPLITS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read the labels of {path} ({exc}); re-download it") from exc
    # (n,) is how some re-exports save a binary label
    return {s: lab[:, None] if lab.ndim == 1 else lab for s, lab in labels.items()}


def _check_images(path: Path, split: str, shape: tuple, dtype: np.dtype) -> None:
    ok = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))
    if not ok or dtype != np.uint8:
        raise DatasetError(
            f"{path.name}: {split}_images is {dtype} {shape}; expected uint8 (n, H, W) or "
            "(n, H, W, 1|3) as MedMNIST publishes them"
        )


def _rows(path: Path, split: str, labels: np.ndarray) -> pd.DataFrame:
    if not np.isin(labels, (0, 1)).all():
        found = np.unique(labels)[:10].tolist()
        raise DatasetError(
            f"{path.name}: {split}_labels hold {found}, not 0/1; only the binary "
            f"PneumoniaMNIST and the multi-label ChestMNIST are supported"
        )
    n = labels.shape[0]
    rows = pd.DataFrame(
        {
            "image_id": [f"{split}_{i}" for i in range(n)],
            "patient_id": None,
            "split": split,
            "source_path": str(path),
            "npz_key": f"{split}_images",
            "npz_index": np.arange(n, dtype=np.int64),
        }
    )
    if labels.shape[1] == 1:
        rows[PNEUMONIA] = labels[:, 0].astype(np.int8)
    else:
        for j, label in enumerate(CHEST_LABELS):
            rows[label] = labels[:, j].astype(np.int8)
        rows[ABNORMAL] = labels.any(axis=1).astype(np.int8)
    return rows


def decode_medmnist(row: dict, size: int) -> tuple[np.ndarray, int, int]:
    """Writer decoder: row ``npz_index`` of ``npz_key``, as one uint8 channel."""
    path = row["source_path"]
    images = npz_array(path, row["npz_key"], os.stat(path).st_mtime_ns)
    image = np.asarray(images[int(row["npz_index"])])
    if image.ndim == 3 and image.shape[2] == 3:  # ITU-R 601 luma, as PIL's "L" conversion
        image = np.clip(image @ np.array([0.299, 0.587, 0.114]), 0, 255).round()
    elif image.ndim == 3:
        image = image[:, :, 0]
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return image, image.shape[1], image.shape[0]


@functools.lru_cache(maxsize=2)
def npz_array(path: str, key: str, mtime_ns: int) -> np.ndarray:
    """``key`` of the npz at ``path``: memory-mapped if stored uncompressed, else loaded.

    Cached per process (``mtime_ns`` keys out a rewritten file): the writer decodes a chunk of
    consecutive rows of one split at a time.
    """
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)  # local file header: name and extra lengths at 26..29
                start = info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                f.seek(start + int.from_bytes(local[28:30], "little"))
                shape, fortran, dtype = _read_npy_header(f)
                offset = f.tell()
            order = "F" if fortran else "C"
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    with np.load(path, allow_pickle=False) as npz:
        return npz[key]


def _array_header(path: Path, key: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of an npz member, without reading its data."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        shape, _, dtype = _read_npy_header(f)
    return shape, dtype


def _read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)
