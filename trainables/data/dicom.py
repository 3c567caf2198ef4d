"""DICOM decoding for the importers: stored values -> modality LUT -> VOI window -> uint8.

Privacy: DICOM headers carry patient-identifying data (names, birth dates, ids, dates,
institutions). Nothing here returns, logs or raises with header content other than the few
display fields named in :data:`HEADER_FIELDS`; callers store only those and the image id.

JPEG 2000 (VinDr-CXR's transfer syntax) is decoded through Pillow's OpenJPEG at a reduced
resolution when the stored size is much smaller than the image: the codestream's wavelet
levels give a 2^r smaller image for a fraction of the work (a 2500x2000 image stored at
224 px decodes about 50x faster at r=3). Everything else goes through ``ds.pixel_array``.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from cxrkd.trainables.data.import_plan import to_uint8

# The only header fields an importer may keep (display parameters, never identifying).
HEADER_FIELDS = (
    "transfer_syntax",
    "photometric",
    "bits_stored",
    "rows",
    "cols",
    "window_center",
    "window_width",
)
_HEADER_TAGS = [
    "PhotometricInterpretation",
    "BitsStored",
    "Rows",
    "Columns",
    "WindowCenter",
    "WindowWidth",
]
_JPEG2000 = {
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}
_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57"}
_JPEG |= {"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_INSTALL_HINT = {
    **dict.fromkeys(_JPEG2000, "pylibjpeg-openjpeg (`pip install pylibjpeg pylibjpeg-openjpeg`)"),
    **dict.fromkeys(_JPEG, "pylibjpeg-libjpeg (`pip install pylibjpeg pylibjpeg-libjpeg`)"),
}


def _first(value) -> float | None:
    """A multi-valued DICOM number's first value (WindowCenter may hold several presets)."""
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    return None if value is None or value == "" else float(value)


def read_header(path: str | os.PathLike) -> dict:
    """The display fields of one DICOM (pixel data and identifying tags are not read out)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    return {
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "rows": int(ds.get("Rows", 0) or 0),
        "cols": int(ds.get("Columns", 0) or 0),
        "window_center": _first(ds.get("WindowCenter")),
        "window_width": _first(ds.get("WindowWidth")),
    }


def _can_decode(transfer_syntax: str) -> bool:
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return get_decoder(UID(transfer_syntax)).is_available
    except NotImplementedError:
        return False


def decoder_problem(transfer_syntax: str) -> str | None:
    """None if pixel data in ``transfer_syntax`` can be decoded here, else what to install."""
    if not transfer_syntax or _can_decode(transfer_syntax):
        return None
    uid = UID(transfer_syntax)
    name = uid.name if uid.is_transfer_syntax else transfer_syntax
    hint = _INSTALL_HINT.get(transfer_syntax)
    if hint:
        return f"no decoder installed for {name} ({transfer_syntax}); install {hint}"
    return (
        f"pydicom has no decoder for {name} ({transfer_syntax}); convert these files to PNG "
        "(or an uncompressed DICOM) first"
    )


def decode_dicom(row: dict, size: int) -> tuple[np.ndarray, int, int]:
    """Writer decoder: ``row["source_path"]`` -> (uint8 image, lungs dark; width; height)."""
    ds = pydicom.dcmread(row["source_path"])
    problem = decoder_problem(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if problem:
        raise RuntimeError(problem)
    stored = stored_values(ds, size)
    return display_image(stored, ds), int(ds.Columns), int(ds.Rows)


def stored_values(ds: pydicom.Dataset, size: int) -> np.ndarray:
    """The stored pixel values (2-D), at a 2^r reduced scale for JPEG 2000 where that keeps
    both sides >= ``size``."""
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError("expected a single-frame grayscale image")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax in _JPEG2000 and int(ds.get("PixelRepresentation", 0)) == 0:
        levels = int(math.log2(min(ds.Rows, ds.Columns) / size)) if size > 0 else 0
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        reduced = _decode_j2k_reduced(frame, max(0, levels))
        if reduced is not None:
            return reduced
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    return pixels


def _decode_j2k_reduced(frame: bytes, reduce: int) -> np.ndarray | None:
    """Decode a JPEG 2000 codestream at 1/2^reduce with Pillow; None -> use pydicom."""
    from PIL import Image, features

    if not features.check_codec("jpg_2000"):
        return None
    reduce = min(reduce, _wavelet_levels(frame))
    try:
        with Image.open(io.BytesIO(frame)) as im:
            im.reduce = reduce
            im.load()
            mode, pixels = im.mode, np.asarray(im)
    except (OSError, ValueError):
        return None
    if mode == "L":
        return pixels
    if mode != "I;16":
        return None
    # Pillow scales a p-bit codestream up to 16 bits; shift back to the stored values so that
    # RescaleSlope/Intercept and the window apply as written in the header.
    precision = _precision(frame)
    if precision is None:
        return None
    return pixels >> (16 - precision) if precision < 16 else pixels


def _segments(frame: bytes):
    """(marker, payload offset) of the main-header segments of a J2K codestream."""
    at = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ; JP2 files wrap it in boxes
    if at < 0:
        return
    at += 2
    while at + 4 <= len(frame) and frame[at] == 0xFF and frame[at + 1] != 0x90:  # until SOT
        yield frame[at + 1], at + 4
        at += 2 + int.from_bytes(frame[at + 2 : at + 4], "big")


def _precision(frame: bytes) -> int | None:
    for marker, at in _segments(frame):
        if marker == 0x51:  # SIZ: Rsiz(2) Xsiz..YTOsiz(32) Csiz(2) then Ssiz of component 0
            return (frame[at + 36] & 0x7F) + 1
    return None


def _wavelet_levels(frame: bytes) -> int:
    """Decomposition levels (COD): the most a codestream can be reduced."""
    for marker, at in _segments(frame):
        if marker == 0x52:  # COD: Scod(1) order(1) layers(2) MCT(1) then levels
            return frame[at + 5]
    return 0


def display_image(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT, then the VOI window (else the VOI LUT, else min-max), then uint8 with
    MONOCHROME1 inverted so that lungs are dark in every stored image."""
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if center is not None and width is not None and width >= 1:
        if function == "SIGMOID":
            image = to_uint8(1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)), 0.0, 1.0)
        elif function == "LINEAR_EXACT":
            image = to_uint8(values, center - width / 2, center + width / 2)
        else:  # LINEAR, DICOM PS3.3 C.11.2.1.2.1
            image = to_uint8(values, center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)
    elif "VOILUTSequence" in ds:
        # the LUT is indexed by the (integer) modality values
        image = to_uint8(apply_voi_lut(np.rint(values).astype(np.int64), ds, prefer_lut=True))
    else:
        image = to_uint8(values)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = 255 - image
    return image
