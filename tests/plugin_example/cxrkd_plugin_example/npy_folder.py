"""Entry point ``cxrkd.importers`` (kind ``npy-folder``): 2-D ``.npy`` images under
``SRC/<split>/<class>/``, classes ``normal`` and ``pneumonia``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrkd.trainables.data.import_plan import ImportPlan, to_uint8
from cxrkd.trainables.data.store import SPLITS, DatasetError

CLASSES = ("normal", "pneumonia")


def decode_npy(row: dict, size: int) -> tuple[np.ndarray, int, int]:
    image = np.load(row["source_path"], allow_pickle=False)
    return to_uint8(image), image.shape[1], image.shape[0]


def plan_npy_folder(src: str, *, name: str | None = None) -> ImportPlan:
    """NumPy arrays (.npy, 2-D) in SRC/{train,val,test}/{normal,pneumonia}/ (plugin)."""
    root = Path(src).expanduser().resolve()
    rows = [
        {
            "image_id": f"{split}/{cls}/{f.stem}",
            "patient_id": None,
            "split": split,
            "source_path": str(f),
            "pneumonia": int(cls == "pneumonia"),
        }
        for split in SPLITS
        for cls in CLASSES
        for f in sorted((root / split / cls).glob("*.npy"))
    ]
    if not rows:
        raise DatasetError(f"no .npy files under {root}/{{train,val,test}}/{{normal,pneumonia}}/")
    return ImportPlan(
        name=name or root.name,
        kind="npy-folder",
        task="binary",
        labels=["pneumonia"],
        finding_labels=[],
        global_label="pneumonia",
        rows=pd.DataFrame(rows),
        decode=decode_npy,
        synthetic=False,
        source=str(root),
    )
