"""What a trial is handed besides its config: the data (through Ray's object store), the
device, and access to teachers on the run storage."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from cxrkd.trainables import teacher_outputs, teachers
from cxrkd.trainables.data.augment import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, Pipeline
from cxrkd.trainables.data.pipeline import BatchLoader, DatasetInfo, SplitData
from cxrkd.trainables.data.store import DatasetStore
from cxrkd.trainables.teacher_files import TeacherError, fetch_model_dir


@dataclass(frozen=True)
class DataBundle:
    """A dataset's facts and split arrays; put in Ray's object store once per study."""

    info: DatasetInfo
    splits: dict[str, SplitData]

    @classmethod
    def from_store(
        cls, store: DatasetStore, splits: tuple[str, ...] = ("train", "val", "test")
    ) -> DataBundle:
        return cls(
            DatasetInfo.from_store(store),
            {s: SplitData.from_store(store, s) for s in splits if store.manifest.splits.get(s)},
        )

    def split(self, name: str) -> SplitData:
        if name not in self.splits:
            from cxrkd.trainables.data.store import DatasetError

            raise DatasetError(
                f"dataset {self.info.name!r} has no {name!r} split (has {sorted(self.splits)})"
            )
        return self.splits[name]


@dataclass
class TrialContext:
    device: torch.device
    data: DataBundle
    _teachers: dict = field(default_factory=dict)

    def load_teacher(self, teacher_uri: str) -> nn.Module:
        """The registered teacher's deployed model, frozen, in eval mode, on the device."""
        if teacher_uri in self._teachers:
            return self._teachers[teacher_uri]
        from cxrkd.trainables.config import parse_config
        from cxrkd.trainables.methods import get_method

        teachers.read_record(teacher_uri, dataset_fingerprint=self.data.info.fingerprint)
        folder = fetch_model_dir(teacher_uri)
        flat = json.loads((folder / "config.json").read_text())
        cfg = parse_config({**flat, "pretrained": False})  # the weights come from model.pt
        cfg = replace(cfg, train=replace(cfg.train, evaluate_test=False))
        model = get_method(cfg.train.method).build(cfg, self.data.info, self).model
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval().requires_grad_(False).to(self.device)
        self._teachers[teacher_uri] = model
        return model

    def teacher_outputs(
        self, teacher_uri: str, *, split: str, pipeline: Pipeline, batch_size: int | None = None
    ) -> np.ndarray:
        """The frozen teacher's float32 outputs ``model(x)`` on un-augmented ``split`` images
        (one row per image, in split order); see :meth:`teacher_arrays`."""
        arrays = self.teacher_arrays(
            teacher_uri, split=split, pipeline=pipeline, outputs=MODEL_OUTPUT, batch_size=batch_size
        )
        return arrays["logits"]

    def teacher_arrays(
        self,
        teacher_uri: str,
        *,
        split: str,
        pipeline: Pipeline,
        outputs: TeacherOutputs,
        batch_size: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Named per-image arrays of the frozen teacher on un-augmented ``split`` images.

        Computed once per (teacher, split, input size, normalisation, ``outputs.tag``) and
        shared through the registry by every trial; row i belongs to image i of the split.
        The arrays keep the dtype ``outputs.extract`` gives them (e.g. float16 features).
        """
        # The cache is only valid for the dataset the teacher was trained on (same check as
        # load_teacher, which the cached path would otherwise skip).
        teachers.read_record(teacher_uri, dataset_fingerprint=self.data.info.fingerprint)
        # Larger batches only pay off on a GPU (ResNet-50 on 2 CPU threads: 6.6 ms per image
        # at 128 vs 4.8 at 32).
        batch_size = batch_size or (128 if self.device.type == "cuda" else 32)
        key = outputs_key(split, pipeline, outputs.tag)
        n = len(self.data.split(split))
        cached = teacher_outputs.load_outputs(teacher_uri, key)
        if cached is not None:
            rows = {name: a.shape[0] for name, a in cached.items() if a.shape[0] != n}
            if rows:
                raise TeacherError(
                    f"cached teacher outputs {teacher_outputs.outputs_uri(teacher_uri, key)} have "
                    f"{rows} rows, but split {split!r} has {n} images; they were made for "
                    "other images: delete that file and they are recomputed"
                )
            return cached
        model = self.load_teacher(teacher_uri)
        data = self.data.split(split)
        loader = BatchLoader(
            data.images, data.labels, batch_size=batch_size, shuffle=False, device=self.device
        )
        chunks: dict[str, list[np.ndarray]] = {}
        with torch.inference_mode():
            for x, _ in loader:
                for name, value in outputs.extract(model, pipeline(x, train=False)["hr"]).items():
                    chunks.setdefault(name, []).append(value.cpu().numpy())
        arrays = {name: np.concatenate(parts) for name, parts in chunks.items()}
        teacher_outputs.save_outputs(teacher_uri, key, arrays)
        return arrays


@dataclass(frozen=True)
class TeacherOutputs:
    """Which outputs of a frozen teacher to cache.

    ``extract(model, x)`` maps a batch of un-augmented, normalised high-resolution views to
    named tensors with the batch on the first axis, in the dtype to store. ``tag`` names
    everything besides the split and the view that changes those values (which outputs, any
    pooling, the stored dtype): it is part of the cache key, so two specs that compute
    different values must have different tags.
    """

    tag: str
    extract: Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]


def _model_output(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"logits": model(x).float()}


# The teacher's plain output (a binary teacher's logits); the empty tag keeps the key short.
MODEL_OUTPUT = TeacherOutputs("", _model_output)


def outputs_key(split: str, pipeline: Pipeline, tag: str) -> str:
    """The registry key of cached outputs, e.g. ``train-64px`` or ``train-64px-mtl-mean``."""
    key = f"{split}-{pipeline.input_size}px"
    if (pipeline.mean, pipeline.std) != (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD):
        key += f"-norm{pipeline.mean:g}_{pipeline.std:g}"
    return f"{key}-{tag}" if tag else key
