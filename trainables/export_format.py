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


def is_multiclass(sidecar: dict) -> bool:
    """Whether the export is a multi-class model: softmax over its classes, decided by argmax
    (else one sigmoid per output and a threshold on the global label)."""
    return sidecar["dataset"]["task"] == "multiclass"


def decision_fields(*, task: str, outputs: list[str], label: str, threshold: float | None) -> dict:
    """The sidecar's ``task``, ``probabilities`` and ``decision`` (plus ``classes`` for a
    multi-class model, which has no threshold: its decision is the most probable class)."""
    if task == "multiclass":
        return {
            "task": task,
            "classes": list(outputs),
            "probabilities": "softmax over the classes (one distribution per image, in the "
            "order of classes)",
            "decision": {
                "rule": "the class of highest probability (argmax); no threshold",
                "classes": list(outputs),
            },
        }
    return {
        "task": task,
        "probabilities": "sigmoid of each logit (one independent probability per output)",
        "decision": {
            "label": label,
            "threshold": threshold,
            "rule": f"{label} when its probability >= {threshold:.6g}",
            "chosen": "on validation, by Youden's J (the threshold the test metrics used)",
        },
    }


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
