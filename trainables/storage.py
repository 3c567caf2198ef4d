"""Run storage: a local path (standing for NFS) or ``s3://bucket/prefix``, through pyarrow.fs.

Only this storage is shared between the driver and the trials on other nodes; trials write
their absolute URIs (Tune changes the working directory into the trial folder).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from trainables.errors import CxrkdError


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
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_text(uri: str, text: str) -> None:
    """Write a small file; local writes are atomic and durable (tmp, fsync, rename, fsync of
    the folder), S3 puts are atomic."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are read by other users
        durable_replace(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


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
    return uri


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
