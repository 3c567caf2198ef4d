"""The teacher registry: each teacher is trained once per fingerprint and reused everywhere.

Lives on the run's storage (``<storage>/teachers/<fingerprint>/``), so a student trial on any
node finds it there: ``record.json`` (written last: a teacher without it does not exist),
``model/`` (the deployed model's weights + resolved config) and ``outputs/`` (the frozen
teacher's logits on the training split, computed once and shared by every student trial).

The fingerprint hashes what makes two teachers the same: model, dataset fingerprint, input
size, seed and the training recipe (every other config value).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainables import storage
from trainables.errors import CxrkdError


class TeacherError(CxrkdError):
    """A teacher that is missing, unreadable or made for another dataset."""


@dataclass(frozen=True)
class TeacherKey:
    model: str
    dataset_fingerprint: str
    img_size: int
    seed: int
    recipe: str  # json of the remaining training config

    @classmethod
    def from_config(cls, flat: dict, dataset_fingerprint: str) -> TeacherKey:
        recipe = {k: v for k, v in sorted(flat.items()) if k not in ("model", "img_size", "seed")}
        return cls(
            model=str(flat["model"]),
            dataset_fingerprint=dataset_fingerprint,
            img_size=int(flat["img_size"]),
            seed=int(flat["seed"]),
            recipe=json.dumps(recipe, sort_keys=True, default=str),
        )

    @property
    def fingerprint(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


class TeacherRegistry:
    def __init__(self, storage_uri: str) -> None:
        self.root = storage.join(storage.normalize(storage_uri), "teachers")

    def uri(self, fingerprint: str) -> str:
        return storage.join(self.root, fingerprint)

    def lookup(self, key: TeacherKey) -> str | None:
        """The teacher's URI if it is registered, else None."""
        uri = self.uri(key.fingerprint)
        return uri if storage.exists(storage.join(uri, "record.json")) else None

    def register(self, key: TeacherKey, model_dir: str | Path, metrics: dict) -> str:
        """Copy a trained model folder in and write the record last (the commit point)."""
        uri = self.uri(key.fingerprint)
        storage.upload_dir(model_dir, storage.join(uri, "model"))
        record = {"key": asdict(key), "fingerprint": key.fingerprint, "metrics": metrics}
        storage.write_json(storage.join(uri, "record.json"), record)
        return uri


def read_record(teacher_uri: str, *, dataset_fingerprint: str) -> dict:
    """The teacher's record; refuses a missing teacher or one made for another dataset."""
    record_uri = storage.join(teacher_uri, "record.json")
    if not storage.exists(record_uri):
        raise TeacherError(
            f"no teacher at {teacher_uri} (no record.json); run the study's teacher stage "
            "first, or pass teacher_path of a registered teacher"
        )
    record = storage.read_json(record_uri)
    theirs = record["key"]["dataset_fingerprint"]
    if theirs != dataset_fingerprint:
        raise TeacherError(
            f"teacher {teacher_uri} was trained on dataset fingerprint {theirs}, but this "
            f"trial's dataset has fingerprint {dataset_fingerprint}; train a teacher on this "
            "dataset (the study's teacher stage does) or use the dataset the teacher was made for"
        )
    return record


def fetch_model_dir(teacher_uri: str) -> Path:
    """A local copy of the teacher's model folder (downloaded once per node and process)."""
    if not storage.is_remote(teacher_uri):
        return Path(storage.join(teacher_uri, "model"))
    cache = Path(tempfile.gettempdir()) / "cxrkd-teachers" / teacher_uri.rsplit("/", 1)[-1]
    if not (cache / "config.json").is_file():
        storage.download_dir(storage.join(teacher_uri, "model"), cache)
    return cache


def outputs_uri(teacher_uri: str, view_key: str) -> str:
    return storage.join(teacher_uri, "outputs", f"{view_key}.npy")


def load_outputs(teacher_uri: str, view_key: str) -> np.ndarray | None:
    uri = outputs_uri(teacher_uri, view_key)
    if not storage.exists(uri):
        return None
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        return np.load(io.BytesIO(f.read()))


def save_outputs(teacher_uri: str, view_key: str, outputs: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, outputs)
    fs, path = storage.filesystem(outputs_uri(teacher_uri, view_key))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(buf.getvalue())
    fs.move(tmp, path)
