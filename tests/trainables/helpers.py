"""Tiny in-memory datasets for trainable tests (no store, no import)."""

from __future__ import annotations

import numpy as np

from trainables.context import DataBundle
from trainables.data.pipeline import DatasetInfo, SplitData


def binary_bundle(n: int = 96, size: int = 32, seed: int = 0, fingerprint: str = "fp0"):
    """Positives have a bright blob: learnable in a few steps, so metrics move."""
    rng = np.random.default_rng(seed)
    splits, n_per = {}, {"train": n, "val": n // 2, "test": n // 2}
    for split, count in n_per.items():
        y = (rng.random(count) < 0.5).astype(np.float32)
        x = rng.integers(0, 80, size=(count, size, size)).astype(np.uint8)
        c = size // 2
        x[y == 1, c - 4 : c + 4, c - 4 : c + 4] = 220
        splits[split] = SplitData.from_arrays(x, y[:, None])
    info = DatasetInfo(
        name="tiny-binary", kind="test", task="binary", labels=("pneumonia",),
        finding_labels=(), global_label="pneumonia", resolution=size,
        n={s: len(d) for s, d in splits.items()},
        positive_rate={s: {"pneumonia": float(d.labels.mean())} for s, d in splits.items()},
        fingerprint=fingerprint, synthetic=True,
    )  # fmt: skip
    return DataBundle(info=info, splits=splits)
