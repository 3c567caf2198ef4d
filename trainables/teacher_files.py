"""A registered teacher's model files: the record that names them, their sha256 checks, and the
local copy a trial loads.

A teacher's ``record.json`` names its upload folder (``models/<uuid>/``) and the sha256 of each
file in it; every read checks that the record cannot point outside its teacher and that the
files still match it. On local storage the registered folder is used in place; remote teachers
are downloaded into a per-user node cache (:func:`teacher_cache_dir`) under the record's content
hash and checked again before every use. Teachers registered before records held hashes (the
model in ``model/``) are read as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError


class TeacherError(CxrkdError):
    """A teacher that is missing, unreadable or made for another dataset."""


RECORD = "record.json"
_MODEL_DIR = re.compile(r"models/[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def fetch_model_dir(teacher_uri: str) -> Path:
    """A local folder holding the teacher's model files, each checked against the sha256 in
    its record before it is returned. On local storage that is the registered folder itself;
    remote teachers are downloaded once per node and user into :func:`teacher_cache_dir`,
    under the record's content hash, and a cached copy that no longer matches is downloaded
    again."""
    record = read_json_record(teacher_uri)
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
    from cxrkd.trainables.data.store import cxrkd_home

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


def read_json_record(teacher_uri: str) -> dict:
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
        and record.get("content_sha256") == content_hash(files)
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


def hash_files(folder: Path) -> dict[str, str]:
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


def content_hash(files: dict[str, str]) -> str:
    """One sha256 for a whole model folder: of its sorted ``{file: sha256}``."""
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
