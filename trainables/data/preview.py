"""A PNG contact sheet of a store's images with their labels (and a synthetic banner)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrkd.trainables.data.store import SYNTHETIC_BANNER, DatasetError, DatasetStore

CAPTION_PX = 12


def write_preview(
    store: DatasetStore, out: str | Path, *, n: int = 16, split: str = "train", seed: int = 0
) -> Path:
    """Write ``n`` random images of ``split`` as a grid, each captioned with its positives."""
    if n < 1:
        raise DatasetError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise DatasetError(f"--out must name a .png file, got {str(out)!r}")
    idx = store.split_indices(split)
    if len(idx) == 0:
        raise DatasetError(f"dataset {store.manifest.name!r} has no {split!r} images")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    side = max(store.manifest.resolution, 96)
    cols = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    banner = CAPTION_PX + 6
    sheet = Image.new("L", (cols * side, rows * (side + CAPTION_PX) + banner), 0)
    draw = ImageDraw.Draw(sheet)
    m = store.manifest
    title = f"{m.name}: {m.kind}, {split}" + (f"  -- {SYNTHETIC_BANNER}" if m.synthetic else "")
    draw.text((4, 2), title, fill=255)
    labels = store.labels
    for k, i in enumerate(chosen):
        r, c = divmod(k, cols)
        x0, y0 = c * side, banner + r * (side + CAPTION_PX)
        tile = Image.fromarray(np.asarray(store.images[i])).resize((side, side))
        sheet.paste(tile, (x0, y0))
        row = store.meta.iloc[i]
        positives = [lab for lab in labels if row[lab] == 1] or ["normal"]
        draw.text((x0 + 2, y0 + side), ",".join(positives)[: side // 6], fill=255)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
