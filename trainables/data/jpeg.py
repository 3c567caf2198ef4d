"""Fast one-channel decoding of JPEG and PNG files for the dataset writer.

Chest radiographs are stored at 1000-3000 px but imported at a few hundred, so most of a full
decode is thrown away by the resize. libjpeg can run its inverse DCT at 1/2, 1/4 or 1/8 scale
(``Image.draft``), which skips most of that work; the writer then resizes the (still larger than
``size``) result to exactly ``size`` with area averaging. Asking for mode ``L`` in the draft also
makes libjpeg return luma only, so colour JPEGs are never expanded to RGB.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cxrkd.trainables.data.import_plan import to_uint8

# Modes holding more than 8 bits per pixel (16-bit PNGs open as I;16 or I).
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def decode_image_file(row: dict, size: int) -> tuple[np.ndarray, int, int]:
    """Decode ``row["source_path"]`` to a 2-D uint8 image, plus its original width and height.

    The returned image is at least ``size`` px on each side where the file is (JPEGs may come
    back at a reduced scale, never below ``size``); the writer resizes it to ``size x size``.
    Wide (16-bit) grayscale images are mapped linearly from their own min..max onto 0..255.
    Unreadable or truncated files raise (PIL's errors), which the writer lists and skips.
    """
    with Image.open(row["source_path"]) as image:
        width, height = image.size  # before draft(), which changes size to the reduced one
        if image.format == "JPEG":
            image.draft("L", (size, size))
        image.load()
        if image.mode in _WIDE_MODES:
            pixels = to_uint8(np.asarray(image))
        else:
            gray = image if image.mode == "L" else image.convert("L")
            pixels = np.asarray(gray, dtype=np.uint8)
    return np.ascontiguousarray(pixels), width, height
