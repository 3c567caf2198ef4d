"""The teacher registry: each teacher is trained once per fingerprint and reused everywhere.

Lives on the run's storage (``<storage>/teachers/<fingerprint>/``), so a student trial on any
node finds it there: ``models/<uuid>/`` (one registration's upload of the deployed model's
weights + resolved config), ``record.json`` (created exclusively once that upload is complete,
naming it and the sha256 of each of its files: the commit point, a teacher without it does not
exist, and of two registrations of one teacher the first record wins) and ``outputs/`` (the
frozen teacher's outputs on the training split, :mod:`trainables.teacher_outputs`). Reading
and checking the files is :mod:`trainables.teacher_files`; this module registers teachers and
checks that one fits the trial that uses it (dataset, normalisation, method, input size).

The fingerprint hashes what makes two teachers the same: model, dataset fingerprint, input
size, seed, the input normalisation (``trainables.models.model_normalization`` of the model)
and the training recipe (every other config value).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

from cxrkd.trainables import storage
from cxrkd.trainables.data.augment import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD
from cxrkd.trainables.models import model_normalization

# TeacherError is the registry's error too (raised here, and kept importable from here so that
# trial errors pickled before it moved still load).
from cxrkd.trainables.teacher_files import (
    RECORD,
    TeacherError,
    content_hash,
    fetch_model_dir,
    hash_files,
    read_json_record,
)

# Keys outside the recipe: named fields of the key, or infrastructure that does not change the
# trained weights (where pretrained weights are read from, whether the test split was scored).
NOT_RECIPE = ("model", "img_size", "seed", "weights_dir", "evaluate_test")
# What every teacher was normalised with before normalisation was per model (the ImageNet grey
# statistics): a key with it hashes as before, so those teachers stay valid; one with other
# statistics (a ViT's 0.5/0.5) gets a new fingerprint, so a teacher trained with the old
# normalisation is never reused for it. Records written before the field read as this.
LEGACY_NORMALIZATION = (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD)


@dataclass(frozen=True)
class TeacherKey:
    model: str
    dataset_fingerprint: str
    img_size: int
    seed: int
    recipe: str  # json of the remaining training config
    normalization: tuple[float, float] = LEGACY_NORMALIZATION  # grey (mean, std) of the input

    def __post_init__(self) -> None:  # a record's JSON list -> the tuple that compares equal
        object.__setattr__(self, "normalization", tuple(float(v) for v in self.normalization))

    @classmethod
    def from_config(cls, flat: dict, dataset_fingerprint: str) -> TeacherKey:
        recipe = {k: v for k, v in sorted(flat.items()) if k not in NOT_RECIPE}
        return cls(
            model=str(flat["model"]),
            dataset_fingerprint=dataset_fingerprint,
            img_size=int(flat["img_size"]),
            seed=int(flat["seed"]),
            recipe=json.dumps(recipe, sort_keys=True, default=str),
            normalization=model_normalization(str(flat["model"])),
        )

    @property
    def fingerprint(self) -> str:
        fields = asdict(self)
        if self.normalization == LEGACY_NORMALIZATION:
            del fields["normalization"]
        text = json.dumps(fields, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


MODELS = "models"  # each registration's upload: models/<uuid4 hex>/
RECORD_FORMAT = 2  # 1 (no "format"): the model in model/, no hashes


class TeacherRegistry:
    def __init__(self, storage_uri: str) -> None:
        self.root = storage.join(storage.normalize(storage_uri), "teachers")

    def uri(self, fingerprint: str) -> str:
        return storage.join(self.root, fingerprint)

    def lookup(self, key: TeacherKey) -> str | None:
        """The teacher's URI if it is registered (its record exists: then its model folder is
        complete), else None."""
        uri = self.uri(key.fingerprint)
        return uri if storage.exists(storage.join(uri, RECORD)) else None

    def register(self, key: TeacherKey, model_dir: str | Path, metrics: dict) -> str:
        """Register a trained model folder under ``key``; returns the teacher's URI.

        The folder is uploaded to a folder of its own (``models/<uuid>/``), then the record,
        which names that folder and the sha256 of every file in it, is created exclusively
        (:func:`storage.create_exclusive`): the commit point. Of several registrations of one
        key (two runs, a retried driver) exactly one creates the record; the others find it,
        delete their own upload and return the same URI, so every caller uses the first one's
        files and nobody ever reads a folder that is still being written."""
        uri = self.uri(key.fingerprint)
        record_uri = storage.join(uri, RECORD)
        if storage.exists(record_uri):  # registered already: reuse it, upload nothing
            return uri
        files = hash_files(Path(model_dir))
        folder = f"{MODELS}/{uuid.uuid4().hex}"
        record = {
            "format": RECORD_FORMAT,
            "key": asdict(key),
            "fingerprint": key.fingerprint,
            "metrics": metrics,
            "model_dir": folder,
            "files": files,
            "content_sha256": content_hash(files),
        }
        text = json.dumps(record, indent=2, sort_keys=True, default=str)
        upload = storage.join(uri, folder)
        try:
            storage.upload_dir(model_dir, upload)
        except BaseException:
            _delete_quietly(upload)  # no record names a half upload
            raise
        try:
            created = storage.create_exclusive(record_uri, text)
        except BaseException:
            # The put may have landed although its answer was lost: then the teacher is ours.
            committed = _committed_folder(record_uri)
            if committed is None:
                _delete_quietly(upload)
                raise
            created = committed == folder
        # A "no" can also come from a retry of our own put whose first answer was lost (boto3
        # retries): the upload is deleted only when the record names another one.
        if not created and _committed_folder(record_uri) not in (folder, None):
            _delete_quietly(upload)  # another registration committed first: use its files
        return uri


def read_record(teacher_uri: str, *, dataset_fingerprint: str) -> dict:
    """The teacher's record; refuses a missing teacher or one made for another dataset."""
    record = read_json_record(teacher_uri)
    theirs = record["key"]["dataset_fingerprint"]
    if theirs != dataset_fingerprint:
        raise TeacherError(
            f"teacher {teacher_uri} was trained on dataset fingerprint {theirs}, but this "
            f"trial's dataset has fingerprint {dataset_fingerprint}; train a teacher on this "
            "dataset (the study's teacher stage does) or use the dataset the teacher was made for"
        )
    return record


def teacher_normalization(teacher_uri: str, *, dataset_fingerprint: str) -> tuple[float, float]:
    """The grey ``(mean, std)`` the teacher's forward pass gets: its model's
    (``model_normalization``), after checking it is what the teacher was trained with."""
    record = read_record(teacher_uri, dataset_fingerprint=dataset_fingerprint)
    model = json.loads((fetch_model_dir(teacher_uri) / "config.json").read_text())["model"]
    expected = model_normalization(model)
    trained = tuple(float(v) for v in record["key"].get("normalization", LEGACY_NORMALIZATION))
    if trained != expected:
        raise TeacherError(
            f"teacher {teacher_uri} ({model}) was trained on inputs normalised with mean/std "
            f"{trained}, but {model} is now normalised with {expected}; train the teacher again "
            "(the study's teacher stage does: its fingerprint differs)"
        )
    return expected


def check_teacher_config(
    teacher_uri: str, *, student: str, methods: Collection[str], img_size: int, wanted: str
) -> dict:
    """The registered teacher's resolved config, after checking that it can teach a
    ``student`` trial at input size ``img_size``: trained by one of ``methods`` (``wanted``
    says what that is and how to get one), at high resolution (``low_res=0``) on that input
    size, since the teacher sees the student's high-resolution view. The dataset is checked
    when the teacher is loaded (:func:`read_record`). One check for every KD method."""
    from cxrkd.trainables.config import ConfigError

    flat = json.loads((fetch_model_dir(teacher_uri) / "config.json").read_text())
    if flat.get("method") not in methods:
        raise ConfigError(
            f"teacher {teacher_uri} was trained with method {flat.get('method')!r}; {student} "
            f"distils {wanted}"
        )
    if flat.get("low_res", 0) or flat["img_size"] != img_size:
        raise ConfigError(
            f"teacher {teacher_uri} was trained on {flat['img_size']} px with low_res="
            f"{flat.get('low_res', 0)}, but it sees this trial's high-resolution view at "
            f"img_size={img_size}; use a teacher trained with low_res=0 at img_size={img_size}"
        )
    return flat


def _committed_folder(record_uri: str) -> str | None:
    """The model folder the record at ``record_uri`` names; None when there is no readable
    record."""
    try:
        folder = json.loads(storage.read_text(record_uri)).get("model_dir", "model")
    except Exception:
        return None
    return folder if isinstance(folder, str) else None


def _delete_quietly(uri: str) -> None:
    with contextlib.suppress(Exception):  # an orphaned upload wastes space, is never read
        storage.delete_dir(uri)
