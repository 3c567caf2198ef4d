"""The teacher registry: each teacher is trained once per fingerprint and reused everywhere.

Lives on the run's storage (``<storage>/teachers/<fingerprint>/``), so a student trial on any
node finds it there: ``models/<uuid>/`` (one registration's upload of the deployed model's
weights + resolved config), ``record.json`` (created exclusively once that upload is complete,
naming it and the sha256 of each of its files: the commit point, a teacher without it does not
exist, and of two registrations of one teacher the first record wins) and ``outputs/`` (the
frozen teacher's outputs on the training split, computed once and shared by every student
trial: one ``<key>.npz`` of named arrays per view and choice of outputs, see
``TrialContext.teacher_arrays``). Remote teachers are downloaded into a per-user cache
(:func:`teacher_cache_dir`), checked against the record's hashes before every use.

The fingerprint hashes what makes two teachers the same: model, dataset fingerprint, input
size, seed, the input normalisation (``trainables.models.model_normalization`` of the model)
and the training recipe (every other config value).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainables import storage
from trainables.data.augment import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD
from trainables.errors import CxrkdError
from trainables.models import model_normalization


class TeacherError(CxrkdError):
    """A teacher that is missing, unreadable or made for another dataset."""


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


RECORD = "record.json"
MODELS = "models"  # each registration's upload: models/<uuid4 hex>/
RECORD_FORMAT = 2  # 1 (no "format"): the model in model/, no hashes
_MODEL_DIR = re.compile(r"models/[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        files = _hash_files(Path(model_dir))
        folder = f"{MODELS}/{uuid.uuid4().hex}"
        record = {
            "format": RECORD_FORMAT,
            "key": asdict(key),
            "fingerprint": key.fingerprint,
            "metrics": metrics,
            "model_dir": folder,
            "files": files,
            "content_sha256": _content_hash(files),
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
    record = _read_json_record(teacher_uri)
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


def fetch_model_dir(teacher_uri: str) -> Path:
    """A local folder holding the teacher's model files, each checked against the sha256 in
    its record before it is returned. On local storage that is the registered folder itself;
    remote teachers are downloaded once per node and user into :func:`teacher_cache_dir`,
    under the record's content hash, and a cached copy that no longer matches is downloaded
    again."""
    record = _read_json_record(teacher_uri)
    folder, files = _model_files(teacher_uri, record)
    folder_uri = storage.join(teacher_uri, folder)
    if files is None:
        return _fetch_legacy(teacher_uri, folder_uri)
    if not storage.is_remote(teacher_uri):
        local = Path(folder_uri)
        if files and not local.is_dir():
            raise _missing_folder(teacher_uri, record, folder_uri)
        _check_files(local, files, teacher_uri=teacher_uri, where=folder_uri)
        return local
    root = teacher_cache_dir()
    cache = root / record["content_sha256"]
    for _ in range(3):
        if cache.is_dir():
            if _mismatch(cache, files) is None:
                return cache
            # Damaged or tampered with: set it aside (another trial may be doing the same)
            # and download it again.
            aside = root / f".damaged-{uuid.uuid4().hex}"
            with contextlib.suppress(OSError):
                cache.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        if files and not storage.exists(folder_uri):
            raise _missing_folder(teacher_uri, record, folder_uri)
        # Downloaded beside it, checked, then renamed into place: trials on one node fetch at
        # the same time, and none may load a half-downloaded copy.
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
        try:
            if files:
                storage.download_dir(folder_uri, tmp)
            _check_files(tmp, files, teacher_uri=teacher_uri, where=folder_uri)
            # Fails when another trial's copy is already in place: checked on the next turn.
            with contextlib.suppress(OSError):
                tmp.rename(cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if cache.is_dir() and _mismatch(cache, files) is None:
        return cache
    raise TeacherError(
        f"teacher {teacher_uri}: its copy in {cache} keeps failing its sha256 check; delete "
        f"{cache} and check what else writes into {root}"
    )


def teacher_cache_dir() -> Path:
    """This user's node cache of downloaded teachers, ``$CXRKD_HOME/cache/teachers`` (so
    ``~/.cxrkd/cache/teachers`` by default; set ``CXRKD_HOME`` to put it on a node-local
    disk), created with mode 0700. Not a shared ``/tmp`` folder: another user there could
    plant a model before us. Entries are named by content hash and checked before use, so
    the cache may also sit in a home folder shared by the nodes."""
    from trainables.data.store import cxrkd_home

    root = cxrkd_home() / "cache" / "teachers"
    for folder in (root.parent, root):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
        if info.st_uid != os.getuid():
            raise TeacherError(
                f"the teacher cache {folder} belongs to user id {info.st_uid}, not to you; set "
                "CXRKD_HOME to a folder of your own"
            )
        if info.st_mode & 0o077:
            os.chmod(folder, 0o700)
    return root


def _read_json_record(teacher_uri: str) -> dict:
    record_uri = storage.join(teacher_uri, RECORD)
    if not storage.exists(record_uri):
        raise TeacherError(
            f"no teacher at {teacher_uri} (no record.json); run the study's teacher stage "
            "first, or pass teacher_path of a registered teacher"
        )
    try:
        record = json.loads(storage.read_text(record_uri))
    except ValueError as exc:
        raise TeacherError(
            f"teacher {teacher_uri}: its record {record_uri} is not valid JSON ({exc}); delete "
            f"{teacher_uri} and run the study's teacher stage again"
        ) from exc
    if not isinstance(record, dict) or not isinstance(record.get("key"), dict):
        raise TeacherError(
            f"teacher {teacher_uri}: its record {record_uri} has no key; delete {teacher_uri} "
            "and run the study's teacher stage again"
        )
    return record


def _model_files(teacher_uri: str, record: dict) -> tuple[str, dict[str, str] | None]:
    """``(model folder relative to the teacher, {file: sha256})`` from a record, after
    checking that the record cannot point outside its teacher; files None for a record
    written before records held hashes (the model is in ``model/``)."""
    if "model_dir" not in record and "files" not in record:
        return "model", None
    folder, files = record.get("model_dir"), record.get("files")
    ok = (
        isinstance(folder, str)
        and _MODEL_DIR.fullmatch(folder) is not None
        and isinstance(files, dict)
        and all(isinstance(n, str) and _safe_name(n) for n in files)
        and all(isinstance(d, str) and _SHA256.fullmatch(d) for d in files.values())
        and record.get("content_sha256") == _content_hash(files)
    )
    if not ok:
        raise TeacherError(
            f"teacher {teacher_uri}: its record.json is malformed (model_dir, files and "
            f"content_sha256 do not fit together); delete {teacher_uri} and run the study's "
            "teacher stage again"
        )
    return folder, files


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return "\\" not in name and all(p not in ("", ".", "..") for p in parts)


def _missing_folder(teacher_uri: str, record: dict, folder_uri: str) -> TeacherError:
    key = record["key"]
    return TeacherError(
        f"teacher {teacher_uri} ({key.get('model')} at {key.get('img_size')} px, seed "
        f"{key.get('seed')}, fingerprint {record.get('fingerprint')}) is registered, but its "
        f"model folder {folder_uri} is missing; delete {storage.join(teacher_uri, RECORD)} "
        "and run the study's teacher stage again to train and register it anew"
    )


def _check_files(folder: Path, files: dict[str, str], *, teacher_uri: str, where: str) -> None:
    problem = _mismatch(folder, files)
    if problem is not None:
        raise TeacherError(
            f"teacher {teacher_uri}: the model files in {where} do not match its record "
            f"({problem}); they were changed after registration. Delete {teacher_uri} and run "
            "the study's teacher stage again"
        )


def _mismatch(folder: Path, files: dict[str, str]) -> str | None:
    """None when ``folder`` holds exactly ``files``, with those sha256s; else what differs."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    missing, extra = sorted(set(files) - present), sorted(present - set(files))
    if missing:
        return f"missing {', '.join(missing)}"
    if extra:
        return f"unexpected {', '.join(extra)}"
    for name in sorted(files):
        if _sha256(folder / name) != files[name]:
            return f"{name} does not match its sha256"
    return None


def _hash_files(folder: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file below ``folder``."""
    if not folder.is_dir():
        raise TeacherError(f"cannot register teacher: {folder} is not a folder")
    return {
        p.relative_to(folder).as_posix(): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_hash(files: dict[str, str]) -> str:
    """One sha256 for a whole model folder: of its sorted ``{file: sha256}``."""
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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


def _fetch_legacy(teacher_uri: str, folder_uri: str) -> Path:
    """A teacher registered before records held hashes: used as it is (nothing to check it
    against), downloaded once per node and storage."""
    if not storage.is_remote(teacher_uri):
        return Path(folder_uri)
    digest = hashlib.blake2b(teacher_uri.encode(), digest_size=8).hexdigest()
    root = teacher_cache_dir()
    cache = root / f"legacy-{teacher_uri.rsplit('/', 1)[-1]}-{digest}"
    if not cache.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
        storage.download_dir(folder_uri, tmp)
        try:
            tmp.rename(cache)
        except OSError:  # another trial's copy is already in place
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def check_teacher_config(
    teacher_uri: str, *, student: str, methods: Collection[str], img_size: int, wanted: str
) -> dict:
    """The registered teacher's resolved config, after checking that it can teach a
    ``student`` trial at input size ``img_size``: trained by one of ``methods`` (``wanted``
    says what that is and how to get one), at high resolution (``low_res=0``) on that input
    size, since the teacher sees the student's high-resolution view. The dataset is checked
    when the teacher is loaded (:func:`read_record`). One check for every KD method."""
    from trainables.config import ConfigError

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
