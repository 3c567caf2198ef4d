"""What an importer hands the store writer, and the pixel conversions decoders share.

An importer says *what* to import as an :class:`ImportPlan`: one metadata row per source image
and a picklable ``decode(row, size)`` function (run in the writer's worker processes); the writer
(:mod:`trainables.data.writer`) does the rest. :func:`to_uint8` maps raw pixel values (DICOM,
16-bit PNG) onto 0..255; :func:`resize_square` gives the one stored size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from cxrkd.trainables.data.store import SPLITS, DatasetError

# decode(row, size) -> (uint8 image (H, W), original width, original height). ``size`` is a hint
# (a JPEG decoder may use it to decode at reduced scale); the writer resizes to exactly size.
Decoder = Callable[[dict, int], tuple[np.ndarray, int, int]]
REQUIRED_COLUMNS = ("image_id", "patient_id", "split", "source_path")


@dataclass(frozen=True)
class ImportPlan:
    name: str
    kind: str
    task: str
    labels: list[str]
    finding_labels: list[str]
    global_label: str
    rows: pd.DataFrame
    decode: Decoder
    synthetic: bool
    source: str
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        missing = [c for c in (*REQUIRED_COLUMNS, *self.labels) if c not in self.rows.columns]
        if missing:
            raise DatasetError(f"import plan for {self.name!r} lacks columns {missing}")
        if self.rows.empty:
            raise DatasetError(f"nothing to import for {self.name!r}: no images found")
        dupes = self.rows["image_id"][self.rows["image_id"].duplicated()]
        if len(dupes):
            raise DatasetError(f"duplicate image ids, e.g. {dupes.iloc[:5].tolist()}")
        bad_split = set(self.rows["split"]) - set(SPLITS)
        if bad_split:
            raise DatasetError(f"unknown split names {sorted(bad_split)}; expected {SPLITS}")
        values = self.rows[self.labels].to_numpy()
        if not np.isin(values, (0, 1)).all():
            raise DatasetError("label columns must hold only 0 and 1")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to ``size x size`` (area averaging when shrinking)."""
    if image.shape == (size, size):
        return image
    pil = Image.fromarray(image)
    shrink = image.shape[0] >= size and image.shape[1] >= size
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(pil.resize((size, size), method), dtype=np.uint8)


def to_uint8(image: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Linearly map ``[low, high]`` (default: the image's min/max) onto 0..255."""
    image = np.asarray(image, dtype=np.float32)
    low = float(image.min()) if low is None else float(low)
    high = float(image.max()) if high is None else float(high)
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((image - low) * scale, 0, 255).round().astype(np.uint8)
