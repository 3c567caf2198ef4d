"""Tiny in-memory datasets for trainable tests (no store, no import)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from cxrkd.trainables.config import parse_config
from cxrkd.trainables.context import DataBundle
from cxrkd.trainables.data.pipeline import BatchLoader, DatasetInfo, SplitData
from cxrkd.trainables.loop import run_trial
from cxrkd.trainables.teachers import TeacherKey, TeacherRegistry
from cxrkd.trainables.trainable import LocalReporter


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


def multiclass_bundle(n: int = 60, size: int = 16, seed: int = 0, fingerprint: str = "fp-mc"):
    """Three classes (one-hot label rows), each with a bright blob in its own place: learnable
    in a few steps. Class 1 is rare (about 1 in 6), so macro and micro figures differ."""
    rng = np.random.default_rng(seed)
    classes = ("covid", "normal", "pneumonia")
    splits = {}
    for split, count in {"train": n, "val": n // 2, "test": n // 2}.items():
        k = rng.choice(3, size=count, p=[0.45, 0.15, 0.4])
        k[:3] = (0, 1, 2)  # every class in every split
        x = rng.integers(0, 80, size=(count, size, size)).astype(np.uint8)
        for j, (r, c) in enumerate(((2, 2), (2, size - 6), (size - 6, 2))):
            x[k == j, r : r + 4, c : c + 4] = 220
        splits[split] = SplitData.from_arrays(x, np.eye(3, dtype=np.float32)[k])
    info = DatasetInfo(
        name="tiny-multiclass", kind="test", task="multiclass", labels=classes,
        finding_labels=(), global_label=classes[0], resolution=size,
        n={s: len(d) for s, d in splits.items()},
        positive_rate={s: dict(zip(classes, d.labels.mean(0).tolist(), strict=True))
                       for s, d in splits.items()},
        fingerprint=fingerprint, synthetic=True,
    )  # fmt: skip
    return DataBundle(info=info, splits=splits)


def multilabel_bundle(n: int = 32, size: int = 16, seed: int = 0, fingerprint: str = "fp-ml"):
    """Two findings plus an ``abnormal`` global label (any finding): a MLCAK-style dataset."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in {"train": n, "val": n // 2, "test": n // 2}.items():
        findings = (rng.random((count, 2)) < 0.3).astype(np.float32)
        labels = np.concatenate([findings, findings.max(axis=1, keepdims=True)], axis=1)
        x = rng.integers(0, 255, size=(count, size, size)).astype(np.uint8)
        splits[split] = SplitData.from_arrays(x, labels)
    info = DatasetInfo(
        name="tiny-multilabel", kind="test", task="multilabel",
        labels=("effusion", "nodule", "abnormal"), finding_labels=("effusion", "nodule"),
        global_label="abnormal", resolution=size, n={s: len(d) for s, d in splits.items()},
        positive_rate={}, fingerprint=fingerprint, synthetic=True,
    )  # fmt: skip
    return DataBundle(info=info, splits=splits)


# A trial small enough for a test: 16 px, batches of 8, two optimiser steps per epoch.
TINY = {"img_size": 16, "epochs": 1, "batch_size": 8, "steps_per_epoch": 2}


def train_teacher(storage: str | Path, data: DataBundle, **overrides) -> str:
    """Train a tiny ``transfer`` teacher with the real loop, register it, return its URI.

    The registry key is built from the resolved config, as the study's teacher stage does.
    """
    flat = {**TINY, "method": "transfer", "model": "test_resnet", "lr": 3e-3, **overrides}
    keep = Path(tempfile.mkdtemp(prefix="teacher-", dir=storage))
    reporter = LocalReporter(keep=keep)
    run_trial(flat, data, reporter=reporter)
    key = TeacherKey.from_config(parse_config(flat).to_flat(), data.info.fingerprint)
    return TeacherRegistry(str(storage)).register(key, reporter.checkpoints[-1], {})


# A two-headed ViT small enough for a test: 32 px in 8-px patches, 2 blocks.
TINY_VIT = {"model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "depth": 2}

# One small, valid configuration per registered method (on top of TINY), for the tests that
# are parametrized over the method registry. A new method needs an entry: example_config
# says so, so the registry tests fail until it has one.
EXAMPLES = {
    "cnn_baseline": {"model": "cnn_baseline"},
    "transfer": {"model": "test_resnet"},
    "kd_logit": {"model": "test_resnet"},
    "vit_mtl": {**TINY_VIT, "low_res": 8},
    "kd_vit": {**TINY_VIT, "low_res": 8, "kd_approach": "mlcak", "gamma": 0.5},
}
# The teacher that the KD methods of each dataset task distil from (trained by train_teacher).
TEACHERS = {
    "binary": {"method": "transfer", "model": "test_resnet", "lr": 3e-3},
    "multiclass": {"method": "transfer", "model": "test_resnet", "lr": 3e-3},
    "multilabel": {**TINY_VIT, "method": "vit_mtl", "lr": 3e-3},
}


def example_bundle(task: str) -> DataBundle:
    """The tiny dataset of a task: binary 16 px (CNNs), multi-label 32 px (the tiny ViT)."""
    return binary_bundle(n=48, size=16) if task == "binary" else multilabel_bundle(n=32, size=32)


def example_config(method: str, teacher_uri: str | None = None) -> dict:
    """A tiny trial config of ``method`` (``teacher_uri`` for the methods that need one)."""
    from cxrkd.trainables.methods import load_methods

    if method not in EXAMPLES:
        raise KeyError(
            f"no example config for method {method!r}: add one to EXAMPLES in "
            "tests/trainables/helpers.py (the registry-wide tests train every method)"
        )
    flat = {**TINY, "method": method, **EXAMPLES[method]}
    if load_methods()[method].needs_teacher:
        flat["teacher_path"] = teacher_uri
    return flat


def first_batch(task, data: DataBundle, *, n: int = 6, train: bool = True):
    """Views, labels and side arrays of the first ``n`` training images, as the loop makes
    them (``train``: with the training augmentation), at the bundle's stored side."""
    import torch

    split = data.split("train")
    loader = BatchLoader(
        split.images, split.labels, batch_size=n, shuffle=False, device=torch.device("cpu")
    )
    idx = loader.epoch_order(0)[:n]
    x, y = loader.batch(idx)
    extras = {k: torch.from_numpy(v[idx]) for k, v in task.side_arrays("train").items()}
    return task.make_pipeline(input_size=data.info.resolution)(x, train=train), y, extras
