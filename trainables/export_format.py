"""What an export folder holds (``cxrkd export``): the model file of its format and the JSON
sidecar. No torch here: the CLI lists the formats without importing it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrkd.trainables.errors import CxrkdError

SIDECAR = "cxrkd-model.json"
SIDECAR_VERSION = 1
FORMATS = {
    "safetensors": "model.safetensors",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
}
ONNX_INSTALL = "pip install 'cxrkd[onnx]' (onnx to export, onnxruntime to predict)"


class ExportError(CxrkdError):
    """A model that cannot be exported or applied, or an input that cannot be read."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known formats: {list(FORMATS)}")
    return fmt


def read_sidecar(folder: str | os.PathLike) -> dict:
    """The sidecar of an export folder, checked: its format and version."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        raise ExportError(
            f"{folder} is not a cxrkd export (no {SIDECAR}); make one with `cxrkd export RUN "
            "--cell CELL --format FORMAT --out DIR`"
        )
    try:
        sidecar = json.loads(path.read_text())
        check_format(sidecar["model_format"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
    if sidecar.get("sidecar_version") != SIDECAR_VERSION:
        raise ExportError(
            f"{path} is version {sidecar.get('sidecar_version')} of the sidecar; this cxrkd "
            f"reads version {SIDECAR_VERSION}: export the model again with this cxrkd"
        )
    return sidecar
