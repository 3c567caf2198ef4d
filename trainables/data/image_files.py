"""Image files of the generic importers (``folder``, ``csv``): which files are images, how each
is decoded, which byte-identical copies are dropped, and whether the DICOMs can be decoded.

- PNG and JPEG go through :func:`trainables.data.jpeg.decode_image_file` (any mode: RGB, RGBA,
  palette and 1-bit become one 8-bit channel; 16-bit grayscale is mapped from its own min..max
  onto 0..255); DICOM through :func:`trainables.data.dicom.decode_dicom` (modality LUT, window,
  MONOCHROME1 inverted). A file without an extension is a DICOM if it carries the ``DICM``
  preamble (PACS exports often have no extension); other extensions are refused by the callers.
- Byte-identical files are imported once, as the Kaggle importer does (REAL_DATA.md): the copy
  in an explicit test split if there is one, else one in an explicit val split, else the first
  by image id; so the same picture never sits in train and in val or test.
- DICOMs are probed before anything is written: a transfer syntax no installed codec decodes is
  one clear error, not thousands of files skipped as unreadable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkd.trainables.data.dicom import decode_dicom, decoder_problem, read_header
from cxrkd.trainables.data.jpeg import decode_image_file
from cxrkd.trainables.data.store import DatasetError

IMAGE_SUFFIXES = {
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".dcm": "dicom",
    ".dicom": "dicom",
}
ACCEPTED = "PNG, JPEG (.png .jpg .jpeg) and DICOM (.dcm .dicom, or no extension)"
# Entries a file manager or an archiver leaves behind; never images.
LITTER_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")
_KEPT_FIRST = {"test": 0, "val": 1}  # a duplicate copy in these splits is the one kept
_PROBE_FILES = 3
_SHOWN = 5


def is_litter(name: str) -> bool:
    """Hidden files (``.DS_Store``, ``._x.png``), ``__MACOSX/`` and Windows thumbnails."""
    return name.startswith(".") or name in LITTER_NAMES


def image_format(path: str | os.PathLike) -> str | None:
    """``"image"`` (PNG/JPEG), ``"dicom"``, or None for a file the importers do not read."""
    suffix = Path(path).suffix.lower()
    if suffix:
        return IMAGE_SUFFIXES.get(suffix)
    try:
        with open(path, "rb") as f:
            return "dicom" if f.read(132)[128:] == b"DICM" else None
    except OSError:
        return None


def decode_any(row: dict, size: int) -> tuple[np.ndarray, int, int]:
    """Writer decoder: by ``row["format"]``, a DICOM or a PNG/JPEG, as one uint8 channel."""
    if row["format"] == "dicom":
        return decode_dicom(row, size)
    return decode_image_file(row, size)


def shown(items: list[str], limit: int = _SHOWN) -> str:
    """The first ``limit`` items, then how many more."""
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


def _file_hash(path: str) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def drop_byte_duplicates(rows: pd.DataFrame, *, labels: list[str]) -> tuple[pd.DataFrame, list]:
    """Keep one row per byte-identical file (see the module docstring); notes for the manifest.

    ``rows`` has ``image_id``, ``source_path`` and ``split`` (train/val/test, or None where the
    importer draws the split later).
    """
    by_size = defaultdict(list)
    for i, path in enumerate(rows["source_path"]):
        by_size[os.path.getsize(path)].append(i)
    by_hash = defaultdict(list)  # only files of one size can be identical: hash just those
    for members in by_size.values():
        if len(members) > 1:
            for i in members:
                by_hash[_file_hash(rows["source_path"].iat[i])].append(i)
    split = rows["split"].fillna("train")
    drop, examples, cross_split, conflicting = [], [], 0, 0
    for members in by_hash.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: (_KEPT_FIRST.get(split.iat[i], 2), rows["image_id"].iat[i]))
        drop += members[1:]
        examples += [
            f"{rows['image_id'].iat[i]} = {rows['image_id'].iat[members[0]]}" for i in members[1:]
        ]
        cross_split += split.iloc[members].nunique() > 1
        conflicting += len(rows[labels].iloc[members].drop_duplicates()) > 1
    if not drop:
        return rows, []
    notes = [
        f"dropped {len(drop)} byte-identical duplicate file(s), keeping one copy (a test copy "
        f"where there is one, else a val copy, else the first by path): {shown(sorted(examples))}"
    ]
    if cross_split:
        notes.append(
            f"{cross_split} duplicate group(s) spanned splits: the copy in the held-out split was "
            "kept, so no picture is in two splits"
        )
    if conflicting:
        notes.append(
            f"{conflicting} duplicate group(s) had copies with different labels; the kept copy's "
            "labels are used"
        )
    return rows.drop(index=rows.index[drop]).reset_index(drop=True), notes


def check_dicoms(rows: pd.DataFrame) -> None:
    """Raise if the DICOMs among ``rows`` (``format == "dicom"``) cannot be decoded here."""
    dicoms = rows[rows["format"] == "dicom"]
    if dicoms.empty:
        return
    syntaxes = defaultdict(int)
    for path in dicoms["source_path"]:
        with contextlib.suppress(Exception):  # an unparseable file is listed by the writer
            syntaxes[read_header(path)["transfer_syntax"]] += 1
    for syntax, count in sorted(syntaxes.items()):
        problem = decoder_problem(syntax)
        if problem:
            raise DatasetError(f"{count} DICOM file(s) cannot be decoded: {problem}")
    errors = []
    for row in dicoms.head(_PROBE_FILES).to_dict("records"):
        try:
            decode_dicom(row, 64)
            return
        except Exception as exc:  # any failure: summarised below
            errors.append(f"{row['image_id']}: {type(exc).__name__}: {exc}"[:300])
    raise DatasetError(
        f"the first {len(errors)} DICOM file(s) could not be decoded:\n  "
        + "\n  ".join(errors)
        + "\nCheck that pydicom and its codecs are installed (pip install pydicom pylibjpeg "
        "pylibjpeg-openjpeg) and that the files are intact"
    )
