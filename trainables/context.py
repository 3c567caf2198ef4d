"""What a trial is handed besides its config: the data (through Ray's object store), the
device, and access to teachers on the run storage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from trainables import teachers
from trainables.data.augment import Pipeline
from trainables.data.pipeline import BatchLoader, DatasetInfo, SplitData
from trainables.data.store import DatasetStore


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
            from trainables.data.store import DatasetError

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
        from trainables.config import parse_config
        from trainables.methods import get_method

        teachers.read_record(teacher_uri, dataset_fingerprint=self.data.info.fingerprint)
        folder = teachers.fetch_model_dir(teacher_uri)
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
        self, teacher_uri: str, *, split: str, pipeline: Pipeline, batch_size: int = 128
    ) -> np.ndarray:
        """The frozen teacher's float32 outputs on un-augmented ``split`` images, computed once
        per (teacher, split, input size) and shared through the registry by every trial."""
        key = f"{split}-{pipeline.input_size}px"
        cached = teachers.load_outputs(teacher_uri, key)
        if cached is not None:
            return cached
        model = self.load_teacher(teacher_uri)
        data = self.data.split(split)
        loader = BatchLoader(
            data.images, data.labels, batch_size=batch_size, shuffle=False, device=self.device
        )
        chunks = []
        with torch.inference_mode():
            for x, _ in loader:
                chunks.append(model(pipeline(x, train=False)["hr"]).float().cpu().numpy())
        outputs = np.concatenate(chunks).astype(np.float32)
        teachers.save_outputs(teacher_uri, key, outputs)
        return outputs
