"""Run storage: a local path (standing for NFS) or ``s3://bucket/prefix``, through pyarrow.fs.

Only this storage is shared between the driver and the trials on other nodes; trials write
their absolute URIs (Tune changes the working directory into the trial folder).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from cxrkd.trainables.errors import CxrkdError


class StorageError(CxrkdError):
    """Storage that cannot be reached or written."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def normalize(uri: str) -> str:
    """Absolute local paths; remote URIs unchanged (without a trailing slash)."""
    if is_remote(uri):
        if "?" in uri:  # run folders are joined onto the URI: they would land in its query
            raise StorageError(
                f"storage URI {uri!r} has a query string; pass s3://bucket/prefix and give a "
                "non-AWS endpoint (MinIO, a test server) in AWS_ENDPOINT_URL on every node"
            )
        return uri.rstrip("/")
    return str(Path(uri.removeprefix("file://")).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


@functools.lru_cache(maxsize=16)
def _remote_filesystem(root: str, endpoint: str | None) -> pafs.FileSystem:
    """One filesystem per ``scheme://bucket`` (and endpoint): creating an S3 filesystem looks
    the bucket's region up, which is too slow to repeat for every small record file."""
    return pafs.FileSystem.from_uri(root)[0]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        if is_remote(uri):
            scheme, rest = uri.split("://", 1)
            root = f"{scheme}://{rest.split('/', 1)[0]}"
            endpoint = os.environ.get("AWS_ENDPOINT_URL")
            return _remote_filesystem(root, endpoint), rest.rstrip("/")
        return pafs.LocalFileSystem(), normalize(uri)
    except Exception as exc:
        raise StorageError(f"cannot open storage {uri!r}: {exc}") from exc


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def durable_replace(tmp: str | Path, path: str | Path) -> None:
    """Rename a fully written local file over ``path`` so that a crash or power loss at any
    moment leaves the old file or the new one, never an empty or half-written one: the data
    reaches the disk before the rename, and the rename before we return."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_folder(path)


def write_text(uri: str, text: str) -> None:
    """Write a small file; local writes are atomic and durable (tmp, fsync, rename, fsync of
    the folder), S3 puts are atomic."""
    write_bytes(uri, text.encode("utf-8"))


def write_bytes(uri: str, data: bytes) -> None:
    """:func:`write_text` for bytes."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are read by other users
        durable_replace(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def create_exclusive(uri: str, text: str) -> bool:
    """Create a small file only if nothing is there yet: True when this call created it,
    False when it already existed (its content is left alone). Atomic: a reader sees no file
    or the whole text, and of several writers racing for one name exactly one wins.

    Local (and NFS): the text is written and fsynced under a temporary name, then hard-linked
    to ``uri`` (``link`` fails when the name exists, and the file appears complete); where the
    filesystem has no hard links, ``O_CREAT | O_EXCL`` then write and fsync. S3: a put with
    ``If-None-Match: *`` (AWS S3 since 2024, MinIO, moto), through boto3, since pyarrow's S3
    filesystem drops that header."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        return _create_exclusive_local(path, text.encode("utf-8"))
    return _create_exclusive_s3(uri, text.encode("utf-8"))


def _fsync_folder(path: str) -> None:
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _create_exclusive_local(path: str, data: bytes) -> bool:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; records are read by other users
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            # NFS: a retransmitted link may report an error although it worked.
            if os.stat(tmp).st_nlink != 2:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                return _create_exclusive_open(path, data)  # a filesystem without hard links
        _fsync_folder(path)
        return True
    finally:
        os.unlink(tmp)


def _create_exclusive_open(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _fsync_folder(path)
    return True


_S3_CLIENTS: dict[str | None, object] = {}
_S3_CLIENTS_LOCK = threading.Lock()


def _s3_client():
    """A boto3 S3 client (one per endpoint; clients are thread-safe, their creation is not).
    Finds credentials, region and ``AWS_ENDPOINT_URL`` as pyarrow does: the AWS variables,
    files and instance roles."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    with _S3_CLIENTS_LOCK:
        if endpoint not in _S3_CLIENTS:
            try:
                import boto3
            except ImportError as exc:
                raise StorageError(
                    "registering on s3:// storage needs boto3 (pyarrow cannot make a "
                    "conditional put, which keeps two runs from registering the same teacher "
                    "over each other); install it on every node: pip install boto3"
                ) from exc
            _S3_CLIENTS[endpoint] = boto3.session.Session().client("s3", endpoint_url=endpoint)
        return _S3_CLIENTS[endpoint]


def _create_exclusive_s3(uri: str, data: bytes) -> bool:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    client = _s3_client()
    for attempt in range(8):
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except Exception as exc:
            response = getattr(exc, "response", None) or {}
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            if status == 412 or code == "PreconditionFailed":
                return False
            if (status == 409 or code == "ConditionalRequestConflict") and attempt < 7:
                time.sleep(0.05 * 2**attempt)  # another conditional put of it is in flight
                continue
            raise StorageError(f"cannot create {uri!r}: {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")


def delete_dir(uri: str) -> None:
    """Delete a folder and everything below it (nothing when it is not there)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def read_json(uri: str) -> dict:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: dict) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str))


def upload_dir(local: str | Path, uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, destination_filesystem=fs)


def download_dir(uri: str, local: str | Path) -> Path:
    fs, path = filesystem(uri)
    Path(local).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs)
    return Path(local)


def check_writable(uri: str) -> str:
    """Fail early, with the fix, when the run storage cannot be written."""
    uri = normalize(uri)
    probe = join(uri, f".cxrkd-write-probe-{os.getpid()}")
    try:
        write_text(probe, "ok")
        fs, path = filesystem(probe)
        fs.delete_file(path)
    except Exception as exc:
        raise StorageError(
            f"storage {uri!r} is not writable ({type(exc).__name__}: {exc}); pass a writable "
            "--storage DIR or s3://bucket/prefix (with credentials on every node)"
        ) from exc
    if is_remote(uri):
        _check_exclusive_create(uri)
    return uri


def _check_exclusive_create(uri: str) -> None:
    """The teacher registry needs :func:`create_exclusive`: check that the server refuses a
    second conditional put (a server that ignores ``If-None-Match`` would let two runs
    register one teacher over each other)."""
    probe = join(uri, f".cxrkd-exclusive-probe-{uuid.uuid4().hex}")
    try:
        first, second = create_exclusive(probe, "1"), create_exclusive(probe, "2")
        fs, path = filesystem(probe)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_file(path)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(
            f"storage {uri!r}: a conditional put failed ({type(exc).__name__}: {exc}); pass a "
            "writable s3://bucket/prefix (with credentials on every node)"
        ) from exc
    if not (first and not second):
        raise StorageError(
            f"storage {uri!r} ignores conditional puts (If-None-Match: *), which the teacher "
            "registry needs so that two runs never register one teacher over each other; use "
            "AWS S3 or an S3 server that supports conditional writes (a recent MinIO)"
        )


def write_parquet(uri: str, frame) -> None:
    """Write a DataFrame as parquet (atomically and durably for local paths)."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp"
    frame.to_parquet(tmp, filesystem=fs, index=False)
    if isinstance(fs, pafs.LocalFileSystem):
        durable_replace(tmp, path)
    else:
        fs.move(tmp, path)


def read_parquet(uri: str):
    import pandas as pd

    fs, path = filesystem(uri)
    return pd.read_parquet(path, filesystem=fs)


def delete_files_named(uri: str, names: tuple[str, ...]) -> int:
    """Delete every file called one of ``names`` below ``uri``; returns how many."""
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    doomed = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name in names]
    for path in doomed:
        fs.delete_file(path)
    return len(doomed)
