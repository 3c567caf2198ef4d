"""The dataset store: decoded uint8 images (memory-mapped) + parquet metadata + a manifest.

Layout of ``$CXRKD_HOME/datasets/NAME/`` (see DESIGN.md, "Dataset store", a contract):

- ``images.npy``    uint8 array ``(N, S, S)``: one channel, decoded and resized once.
- ``meta.parquet``  one row per image, row ``i`` describes ``images[i]``: ``image_id``,
  ``patient_id`` (or null), ``split`` (train/val/test), one 0/1 column per label, ``source_path``,
  ``orig_width``, ``orig_height``, plus importer-specific columns (never identifying data).
- ``manifest.json`` the dataset description printed by ``cxrkd data show --json``.

A store directory only exists once it is complete: the writer builds it under a hidden staging
name and renames it into place as its very last step.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkd.trainables.errors import CxrkdError

SPLITS = ("train", "val", "test")
TASKS = ("binary", "multiclass", "multilabel")
# Columns every image row has; label columns must not collide with these.
BASE_COLUMNS = (
    "image_id",
    "patient_id",
    "split",
    "source_path",
    "orig_width",
    "orig_height",
)
IMAGES_FILE = "images.npy"
META_FILE = "meta.parquet"
MANIFEST_FILE = "manifest.json"
SYNTHETIC_BANNER = "SYNTHETIC phantom data (not real patients)"


class DatasetError(CxrkdError):
    """A dataset problem a user can fix; the message says what and how."""


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: str, *, what: str = "dataset", example: str = "kaggle-pneumonia-224") -> str:
    """A store (or run) name is one path component: letters, digits, '.', '_', '-' (no '/',
    no '\\', no '..', nothing outside ASCII, no control characters; 1 to 100 characters).
    ``search.run_state.check_run_name`` uses it for run names."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise DatasetError(
            f"bad {what} name {name!r}: use letters, digits, '.', '_' and '-' (at most 100, "
            f"starting with a letter or digit, no '..'), e.g. --name {example}"
        )
    return name


def cxrkd_home(home: str | os.PathLike | None = None) -> Path:
    """``home`` if given, else ``$CXRKD_HOME``, else ``~/.cxrkd`` (always absolute)."""
    if home is None:
        home = os.environ.get("CXRKD_HOME") or Path.home() / ".cxrkd"
    return Path(home).expanduser().resolve()


def datasets_dir(home: str | os.PathLike | None = None) -> Path:
    return cxrkd_home(home) / "datasets"


@dataclass(frozen=True)
class Manifest:
    """What a store holds. ``labels`` name the 0/1 columns of ``meta.parquet`` in order.

    For multi-label datasets, ``finding_labels`` are the local findings (the MLCAK paper's MLCT
    task) and ``global_label`` is the normal/abnormal column (its MCCT task). For binary
    datasets ``labels`` has one name and ``global_label`` is that name. For multi-class
    datasets ``labels`` are the classes in order (one 0/1 column each, exactly one 1 per image:
    the class index of an image is the argmax of its row) and ``global_label`` is the first
    class (a store names one; no metric of a multi-class task reads it).
    """

    name: str
    kind: str
    task: str
    labels: list[str]
    finding_labels: list[str]
    global_label: str
    splits: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    resolution: int
    fingerprint: str
    synthetic: bool
    n_images: int
    source: str
    created: str
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DatasetError(f"task must be one of {TASKS}, got {self.task!r}")
        clash = set(self.labels) & set(BASE_COLUMNS)
        if clash:
            raise DatasetError(f"label names {sorted(clash)} collide with metadata columns")
        if self.global_label not in self.labels:
            raise DatasetError(f"global_label {self.global_label!r} is not in labels")

    @property
    def title(self) -> str:
        """One line naming the dataset, flagged as synthetic where it is."""
        flag = f" [{SYNTHETIC_BANNER}]" if self.synthetic else ""
        return f"{self.name} ({self.kind}, {self.task}, {self.resolution}px){flag}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))


class DatasetStore:
    """An opened store: ``images`` is a read-only memory map, ``meta`` a DataFrame."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise DatasetError(f"{self.path} is not a dataset store (no {MANIFEST_FILE})")
        self.manifest = Manifest.from_json(manifest_path.read_text())
        self.meta = pd.read_parquet(self.path / META_FILE)
        self.images: np.ndarray = np.load(self.path / IMAGES_FILE, mmap_mode="r")
        if len(self.meta) != self.images.shape[0]:
            raise DatasetError(
                f"store {self.path} is inconsistent: {len(self.meta)} metadata rows but "
                f"{self.images.shape[0]} images; re-import it"
            )

    @classmethod
    def open(cls, name: str, home: str | os.PathLike | None = None) -> DatasetStore:
        path = datasets_dir(home) / check_name(name)
        if not (path / MANIFEST_FILE).is_file():
            known = [m.name for m in list_datasets(home)]
            raise DatasetError(
                f"unknown dataset {name!r}; known datasets: {known or 'none'}. "
                "Import one with `cxrkd data import KIND SRC --name NAME` "
                "(e.g. `cxrkd data import phantom pneumonia`)."
            )
        return cls(path)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.meta["split"].to_numpy() == split)

    def label_matrix(self, split: str | None = None) -> np.ndarray:
        """float32 ``(n, len(labels))`` 0/1 targets, rows in store order."""
        frame = self.meta if split is None else self.meta.iloc[self.split_indices(split)]
        return frame[self.labels].to_numpy(dtype=np.float32)

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 (n,S,S), labels float32 (n,L))`` of one split, loaded into memory."""
        idx = self.split_indices(split)
        return np.ascontiguousarray(self.images[idx]), self.label_matrix(split)


def list_datasets(home: str | os.PathLike | None = None) -> list[Manifest]:
    root = datasets_dir(home)
    if not root.is_dir():
        return []
    out = []
    for child in sorted(root.iterdir()):
        manifest = child / MANIFEST_FILE
        if child.name.startswith(".") or not manifest.is_file():
            continue
        out.append(Manifest.from_json(manifest.read_text()))
    return out


def label_counts(meta: pd.DataFrame, labels: list[str]) -> dict[str, dict[str, int]]:
    """``{split: {label: positives}}`` for the splits present."""
    out = {}
    for split in SPLITS:
        rows = meta[meta["split"] == split]
        if len(rows):
            out[split] = {lab: int(rows[lab].sum()) for lab in labels}
    return out


def split_counts(meta: pd.DataFrame) -> dict[str, int]:
    counts = meta["split"].value_counts()
    return {s: int(counts[s]) for s in SPLITS if s in counts}
