"""The trial side of the data: dataset facts, split arrays, and fast batches on the device.

A trial receives the split arrays through Ray's object store (``tune.with_parameters``), so
everything here works on plain numpy arrays (often read-only: a memory map or an object-store
buffer, never written to). Batches are gathered on the CPU as uint8 (cheap: one fancy-indexing
copy), moved to the device, and only there converted to float; augmentation, the low-resolution
view and normalisation follow on the device (:mod:`trainables.data.augment`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cxrkd.trainables.data.augment import (
    IMAGENET_GRAY_MEAN,
    IMAGENET_GRAY_STD,
    Augment,
    Pipeline,
    PipelineError,
    affine_theta,
    epoch_generator,
    gray_stats,
    low_resolution,
    normalize,
    resize,
)
from cxrkd.trainables.data.store import SPLITS, DatasetStore

__all__ = [
    "IMAGENET_GRAY_MEAN",
    "IMAGENET_GRAY_STD",
    "Augment",
    "BatchLoader",
    "DatasetInfo",
    "Pipeline",
    "PipelineError",
    "SplitData",
    "affine_theta",
    "epoch_generator",
    "gray_stats",
    "low_resolution",
    "normalize",
    "resize",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a method needs to know about its dataset (small, picklable, no arrays).

    ``positive_rate[split][label]`` is the fraction of positives, e.g. for a BCE ``pos_weight``.
    """

    name: str
    kind: str
    task: str
    labels: tuple[str, ...]
    finding_labels: tuple[str, ...]
    global_label: str
    resolution: int
    n: dict[str, int]
    positive_rate: dict[str, dict[str, float]]
    fingerprint: str
    synthetic: bool

    @classmethod
    def from_store(cls, store: DatasetStore) -> DatasetInfo:
        m = store.manifest
        rates = {
            split: {lab: count / m.splits[split] for lab, count in counts.items()}
            for split, counts in m.label_counts.items()
            if m.splits.get(split)
        }
        return cls(
            name=m.name,
            kind=m.kind,
            task=m.task,
            labels=tuple(m.labels),
            finding_labels=tuple(m.finding_labels),
            global_label=m.global_label,
            resolution=m.resolution,
            n={s: m.splits.get(s, 0) for s in SPLITS},
            positive_rate=rates,
            fingerprint=m.fingerprint,
            synthetic=m.synthetic,
        )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """Logits of a one-head classifier of this dataset: one per class of a multi-class
        task (softmax), else one (the global label's)."""
        return len(self.labels) if self.task == "multiclass" else 1

    def label_columns(self) -> tuple[tuple[int, ...], int]:
        """``(finding columns, global column)``: indices into the label matrix's columns.

        For the MLCAK multi-task heads: findings are the multi-label task (MLCT), the global
        label the normal/abnormal task (MCCT). A binary dataset has no findings: ``((), 0)``.
        """
        index = {lab: i for i, lab in enumerate(self.labels)}
        return tuple(index[lab] for lab in self.finding_labels), index[self.global_label]


@dataclass(frozen=True)
class SplitData:
    """One split's arrays: images uint8 ``(N, S, S)``, labels float32 ``(N, L)``."""

    images: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_store(cls, store: DatasetStore, split: str) -> SplitData:
        return cls.from_arrays(*store.split_arrays(split))

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray) -> SplitData:
        """Check shapes and dtypes; never copies ``images`` when it is already contiguous."""
        images = np.ascontiguousarray(images)
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise PipelineError(
                f"images must be uint8 (N, S, S), got {images.dtype} {images.shape}; pass a "
                "dataset store's images (DatasetStore.split_arrays)"
            )
        if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
            raise PipelineError(
                f"labels must be (N, L) with N = {images.shape[0]} images, got {labels.shape}; "
                "pass DatasetStore.label_matrix(split) for the same split"
            )
        return cls(images, labels)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def resolution(self) -> int:
        return self.images.shape[1]


class BatchLoader:
    """Epochs of ``(x, y)`` on ``device``: x float32 ``(B, 1, S, S)`` in [0, 1], y ``(B, L)``.

    The order of an epoch depends only on ``(seed, epoch)``, so resuming at epoch k replays epoch
    k's order exactly. Each iteration uses the epoch set by :meth:`set_epoch` and then advances it
    by one (call ``set_epoch`` every epoch, or just iterate again for the next epoch). Within a
    batch the indices are sorted: the batch is the same, and reads from a memory-mapped store
    touch the file in order.

    On CUDA the uint8 batch is gathered straight into one of two pinned buffers and copied with
    ``non_blocking=True``; an event guards each buffer, so the CPU gathers the next batch while
    the GPU still computes on this one. Only the uint8 bytes cross the bus (4x less than float).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
        device: torch.device | str,
        seed: int = 0,
        drop_last: bool = False,
        pin_memory: bool | None = None,
    ) -> None:
        data = SplitData.from_arrays(images, labels)
        if batch_size < 1:
            raise PipelineError(f"batch_size must be at least 1, got {batch_size}")
        if len(data) == 0 or (drop_last and len(data) < batch_size):
            raise PipelineError(
                f"no batch to make: {len(data)} samples, batch_size={batch_size}, "
                f"drop_last={drop_last}; check the split is not empty or lower batch_size"
            )
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        if pin_memory is None:
            pin_memory = on_cuda
        elif pin_memory and not on_cuda:
            raise PipelineError(
                f"pin_memory=True only helps copies to a CUDA device, not to {self.device}; "
                "leave pin_memory unset"
            )
        self.images, self.labels = data.images, data.labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self._epoch = 0
        self._ring: list | None = None  # pinned (x, y, event) buffers, made on first use
        self._slot = 0

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise PipelineError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample indices in the order ``epoch`` yields them (after ``drop_last``)."""
        n = len(self.images)
        if not self.shuffle:
            return np.arange(len(self) * self.batch_size if self.drop_last else n)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        order = order[: len(self) * self.batch_size] if self.drop_last else order
        for start in range(0, len(order), self.batch_size):
            order[start : start + self.batch_size].sort()
        return order

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.epoch_order(self._epoch)  # taken now, not at the first next()
        self._epoch += 1
        return (
            self.batch(order[start : start + self.batch_size])
            for start in range(0, len(order), self.batch_size)
        )

    def batch(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        """The batch of the given sample indices (the loop uses it to gather side arrays
        with the same indices)."""
        if self.pin_memory:
            x, y = self._pinned_copy(idx)
        else:
            # np.take makes fresh writable arrays: no copy of, or warning about, read-only input.
            x = torch.from_numpy(np.take(self.images, idx, axis=0)).to(self.device)
            y = torch.from_numpy(np.take(self.labels, idx, axis=0)).to(self.device)
        return x.unsqueeze(1).to(torch.float32).div_(255.0), y

    def _pinned_copy(self, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        if self._ring is None:
            shape, width = self.images.shape[1:], self.labels.shape[1]
            self._ring = [
                (
                    torch.empty((self.batch_size, *shape), dtype=torch.uint8, pin_memory=True),
                    torch.empty((self.batch_size, width), dtype=torch.float32, pin_memory=True),
                    torch.cuda.Event(),
                )
                for _ in range(2)
            ]
        xbuf, ybuf, done = self._ring[self._slot]
        self._slot ^= 1
        done.synchronize()  # the copy that last read this buffer has finished
        n = len(idx)
        # mode="clip": with the default mode="raise" numpy gathers into a temporary first.
        np.take(self.images, idx, axis=0, out=xbuf.numpy()[:n], mode="clip")
        np.take(self.labels, idx, axis=0, out=ybuf.numpy()[:n], mode="clip")
        x = xbuf[:n].to(self.device, non_blocking=True)
        y = ybuf[:n].to(self.device, non_blocking=True)
        done.record(torch.cuda.current_stream(self.device))
        return x, y
