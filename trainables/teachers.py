"""The teacher registry: each teacher is trained once per fingerprint and reused everywhere.

Lives on the run's storage (``<storage>/teachers/<fingerprint>/``), so a student trial on any
node finds it there: ``record.json`` (written last: a teacher without it does not exist),
``model/`` (the deployed model's weights + resolved config) and ``outputs/`` (the frozen
teacher's outputs on the training split, computed once and shared by every student trial:
one ``<key>.npz`` of named arrays per view and choice of outputs, see
``TrialContext.teacher_arrays``).

The fingerprint hashes what makes two teachers the same: model, dataset fingerprint, input
size, seed and the training recipe (every other config value).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainables import storage
from trainables.errors import CxrkdError


class TeacherError(CxrkdError):
    """A teacher that is missing, unreadable or made for another dataset."""


# Keys outside the recipe: named fields of the key, or infrastructure that does not change the
# trained weights (where pretrained weights are read from, whether the test split was scored).
NOT_RECIPE = ("model", "img_size", "seed", "weights_dir", "evaluate_test")


@dataclass(frozen=True)
class TeacherKey:
    model: str
    dataset_fingerprint: str
    img_size: int
    seed: int
    recipe: str  # json of the remaining training config

    @classmethod
    def from_config(cls, flat: dict, dataset_fingerprint: str) -> TeacherKey:
        recipe = {k: v for k, v in sorted(flat.items()) if k not in NOT_RECIPE}
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
    """A local copy of the teacher's model folder (downloaded once per node and teacher)."""
    if not storage.is_remote(teacher_uri):
        return Path(storage.join(teacher_uri, "model"))
    # Keyed by the whole URI: the same fingerprint on another storage is another teacher.
    digest = hashlib.blake2b(teacher_uri.encode(), digest_size=8).hexdigest()
    name = f"{teacher_uri.rsplit('/', 1)[-1]}-{digest}"
    cache = Path(tempfile.gettempdir()) / "cxrkd-teachers" / name
    if not cache.is_dir():
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Downloaded beside it, then renamed into place: trials on one node fetch at the same
        # time, and none may load a half-downloaded copy.
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".download-"))
        storage.download_dir(storage.join(teacher_uri, "model"), tmp)
        try:
            tmp.rename(cache)
        except OSError:  # another trial's copy is already in place
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def outputs_uri(teacher_uri: str, view_key: str) -> str:
    return storage.join(teacher_uri, "outputs", f"{view_key}.npz")


def load_outputs(teacher_uri: str, view_key: str) -> dict[str, np.ndarray] | None:
    """The named arrays stored under ``view_key``, or None when they were never computed."""
    uri = outputs_uri(teacher_uri, view_key)
    if not storage.exists(uri):
        return None
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        raw = io.BytesIO(f.read())
    with np.load(raw, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def save_outputs(teacher_uri: str, view_key: str, outputs: dict[str, np.ndarray]) -> None:
    """Store named arrays (any dtype: float16 features stay float16) as one ``.npz``; written
    to a temporary name and moved, so a reader never sees half a file."""
    if not outputs:
        raise ValueError(f"no arrays to store under {view_key!r}")
    buf = io.BytesIO()
    np.savez(buf, **outputs)
    fs, path = storage.filesystem(outputs_uri(teacher_uri, view_key))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # unique: two writers never share a temporary
    with fs.open_output_stream(tmp) as f:
        f.write(buf.getbuffer())  # no second copy of a large cache
    fs.move(tmp, path)
