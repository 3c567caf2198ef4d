"""A weights folder: model files plus ``weights_index.json``, the one record of what each is.

Layout (version 1; see ``trainables.weights`` for how a run uses it)::

    DIR/weights_index.json   {"resnet18": entry, "vit_base_patch16_224": entry, ...}
    DIR/resnet18.safetensors the model's state_dict; ``.pth`` (tensors only) for tied weights

    entry = {
        "file": "resnet18.safetensors",  # relative to DIR
        "sha256": "<64 hex digits>",     # checked before every load
        "bytes": 46830571,
        "origin": "timm-hub" | "phantom-pretrained (SYNTHETIC)" | "random-init (TESTS ONLY)",
        "random_init": false,            # the layout before "origin" existed; kept in step
        "timm_version": "1.0.19", "hf_hub_id": "timm/resnet18.a1_in1k" or null,
        "in_chans": 3, "num_classes": 1000,  # the saved layout; timm adapts both on load
        ...                              # origin notes, e.g. the phantom recipe and its AUROC
    }

Files are written under a temporary name and renamed, and the index is rewritten after every
model, so an interrupted download leaves a valid folder holding what it finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cxrkd.trainables.errors import CxrkdError

INDEX_FILE = "weights_index.json"
ALLOW_RANDOM_ENV = "CXRKD_ALLOW_RANDOM_WEIGHTS"
ORIGIN_HUB = "timm-hub"
ORIGIN_PHANTOM = "phantom-pretrained (SYNTHETIC)"
ORIGIN_RANDOM = "random-init (TESTS ONLY)"
ORIGINS = (ORIGIN_HUB, ORIGIN_PHANTOM, ORIGIN_RANDOM)
# Files a folder may hold; .safetensors first because it cannot execute code when loaded.
EXTENSIONS = (".safetensors", ".pth", ".bin")


class WeightsUnavailable(CxrkdError, RuntimeError):
    """Pretrained weights for one or more models cannot be loaded on this machine."""


class WeightsDamaged(WeightsUnavailable):
    """A weights folder whose file or index does not match what was written."""


class RandomWeightsRefused(WeightsUnavailable):
    """A random initialisation written for tests, offered as pretrained weights."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_index(folder: Path) -> dict[str, dict]:
    """``folder``'s index (``{}`` when it has none); a damaged one is refused with the fix."""
    path = folder / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text())
        if not isinstance(index, dict) or not all(isinstance(e, dict) for e in index.values()):
            raise ValueError("not an object of objects")
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsDamaged(
            f"{path} is damaged ({exc}); download the weights again into a new folder "
            "(`cxrkd weights download NAMES --out DIR`)"
        ) from None
    return index


def origin_of(entry: dict) -> str:
    """An entry's origin; entries written before ``origin`` existed say it by ``random_init``."""
    if "origin" in entry:
        return str(entry["origin"])
    return ORIGIN_RANDOM if entry.get("random_init") else ORIGIN_HUB


def random_weights_allowed() -> bool:
    return os.environ.get(ALLOW_RANDOM_ENV, "").strip() == "1"


def verified_file(name: str, folder: Path) -> Path | None:
    """``name``'s file in ``folder`` when its index lists it, after checking the file.

    None when the index does not list ``name``. Raises ``WeightsDamaged`` when the listed file
    is missing or its sha256 differs, and ``RandomWeightsRefused`` for a random initialisation
    unless ``CXRKD_ALLOW_RANDOM_WEIGHTS=1``.
    """
    entry = read_index(folder).get(name)
    if entry is None:
        return None
    redo = f"download it again: `cxrkd weights download {name} --out {folder}`"
    if origin_of(entry) == ORIGIN_PHANTOM:
        redo = f"build it again: `cxrkd weights pretrain-phantom {name} --out {folder}`"
    path = folder / str(entry.get("file", ""))
    if not entry.get("file") or not path.is_file():
        raise WeightsDamaged(
            f"{folder / INDEX_FILE} lists {name} as {path.name!r}, but that file is missing; {redo}"
        )
    if origin_of(entry) == ORIGIN_RANDOM and not random_weights_allowed():
        raise RandomWeightsRefused(
            f"{path} is a random initialisation written for tests (origin "
            f"{ORIGIN_RANDOM!r} in {folder / INDEX_FILE}), not pretrained weights: a run on it "
            f"would report transfer learning that never happened. Use real weights: on a "
            f"connected machine `cxrkd weights download {name} --out DIR`, or train from "
            f"scratch with `--set pretrained=false`. (Tests opt in with {ALLOW_RANDOM_ENV}=1.)"
        )
    found = sha256_of(path)
    if found != entry.get("sha256"):
        raise WeightsDamaged(
            f"{path} does not match its sha256 in {folder / INDEX_FILE} (index "
            f"{str(entry.get('sha256'))[:12]}..., file {found[:12]}...): it was changed or "
            f"damaged after it was written (an interrupted copy?); {redo}"
        )
    return path


def unindexed_file(name: str, folder: Path) -> Path | None:
    """A ``<name>.<ext>`` file the index does not list (copied in by hand): never loaded."""
    if name in read_index(folder):
        return None
    return next(
        (folder / f"{name}{e}" for e in EXTENSIONS if (folder / f"{name}{e}").is_file()), None
    )


def _save_state_dict(model: nn.Module, stem: Path) -> Path:
    import safetensors.torch

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = stem.with_name(stem.name + ".safetensors")
    partial = path.with_name(path.name + ".partial")
    try:
        safetensors.torch.save_file(state, str(partial))
    except RuntimeError:  # tensors sharing memory (tied weights) cannot go to safetensors
        path = stem.with_name(stem.name + ".pth")
        partial = path.with_name(path.name + ".partial")
        torch.save(state, partial)  # tensors only: torch.load(weights_only=True) reads it
    os.replace(partial, path)
    return path


def _layout(model: nn.Module) -> dict[str, Any]:
    """The saved layout timm adapts on load: input channels of the first conv, classes."""
    timm_cfg = getattr(model, "pretrained_cfg", {}) or {}  # timm's metadata, not a trial config
    first = timm_cfg.get("first_conv")
    first = first[0] if isinstance(first, (list, tuple)) else first
    weight = model.state_dict().get(f"{first}.weight") if first else None
    return {
        "in_chans": int(weight.shape[1]) if weight is not None else None,
        "num_classes": getattr(model, "num_classes", None),
    }


def add_weights(folder: Path, name: str, model: nn.Module, *, origin: str, **notes: Any) -> Path:
    """Save ``model``'s state_dict as ``folder/<name>.*`` and list it in the index."""
    if origin not in ORIGINS:
        raise ValueError(f"unknown weights origin {origin!r}; known origins: {ORIGINS}")
    folder.mkdir(parents=True, exist_ok=True)
    path = _save_state_dict(model, folder / name)
    timm_cfg = getattr(model, "pretrained_cfg", {}) or {}  # timm metadata, optional keys
    entry = {
        "file": path.name,
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "origin": origin,
        "random_init": origin == ORIGIN_RANDOM,
        "timm_version": timm.__version__,
        "hf_hub_id": timm_cfg.get("hf_hub_id") if origin == ORIGIN_HUB else None,
        **_layout(model),
        **notes,
    }
    index = read_index(folder)
    index[name] = entry
    partial = folder / f"{INDEX_FILE}.partial"
    partial.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(partial, folder / INDEX_FILE)
    return path
