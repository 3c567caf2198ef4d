"""Disk space for an import: checked before decoding, and the image array's blocks allocated
before it is memory-mapped.

Writing through a mapping of a sparse file on a full disk kills the process with SIGBUS; so free
space is checked first and every block of the array is allocated for real (``posix_fallocate``,
or zeros written where the filesystem cannot), and a full disk is a :class:`DiskSpaceError`
naming the bytes needed and free, with the fix.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from cxrkd.trainables.data.store import DatasetError

# Free space kept beyond the image bytes: metadata, manifest, filesystem overhead.
DISK_MARGIN = 64 * 2**20
# "The disk is full" and "the disk quota is used up".
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# posix_fallocate errors meaning "this filesystem cannot do it": write zeros instead.
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_ZEROS = 8 * 2**20  # bytes per write in the zero-filling fallback


class DiskSpaceError(DatasetError):
    """Not enough free disk space for an import; no store became visible."""


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def disk_full_error(name: str, staging: Path, needed: int, free: int, what: str) -> DiskSpaceError:
    return DiskSpaceError(
        f"not enough disk space to import {name!r}: {what} needs {_human(needed)} "
        f"({needed:,} bytes) in {staging.parent}, but only {_human(free)} ({free:,} bytes) are "
        "free there. Free up space on that disk, or point CXRKD_HOME at a folder on a bigger "
        f"disk, then run the same command again (images decoded so far are kept in {staging} "
        "and reused when you retry with the same CXRKD_HOME)."
    )


def free_bytes(folder: Path) -> int:
    return int(shutil.disk_usage(folder).free)


def check_free(name: str, staging: Path, nbytes: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` unless ``nbytes`` plus a margin are free at ``staging``."""
    free = free_bytes(staging)
    if free < nbytes + DISK_MARGIN:
        raise disk_full_error(name, staging, nbytes + DISK_MARGIN, free, what)


def _allocate(fd: int, offset: int, length: int) -> None:
    """Give bytes ``[offset, offset + length)`` of ``fd`` real disk blocks (OSError if full)."""
    if length <= 0:
        return
    fallocate = getattr(os, "posix_fallocate", None)  # not on macOS or Windows
    if fallocate is not None:
        try:
            fallocate(fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in _NO_FALLOCATE:
                raise
    # The filesystem cannot preallocate: write the zeros, then make it report a full disk now.
    zeros = bytes(min(_ZEROS, length))
    os.lseek(fd, offset, os.SEEK_SET)
    left = length
    while left:
        left -= os.write(fd, zeros[: min(left, len(zeros))])
    os.fsync(fd)


def reserved_memmap(path: Path, shape: tuple[int, ...], name: str) -> np.memmap:
    """Create the ``.npy`` file at ``path`` with all its blocks allocated, then map it.

    Writing through a mapping of a sparse file on a full disk kills the process with SIGBUS;
    writing to allocated blocks cannot fail that way. A full disk raises DiskSpaceError here,
    and ``path`` is removed.
    """
    path.unlink(missing_ok=True)  # from an earlier attempt: its blocks would count as used
    nbytes = int(np.prod(shape))
    check_free(name, path.parent, nbytes, f"the {shape[0]:,}-image array")
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    try:
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.flush()
            _allocate(f.fileno(), f.tell(), nbytes)  # the header stays as written
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in FULL_DISK_ERRNOS:
            raise disk_full_error(
                name, path.parent, nbytes, free_bytes(path.parent), f"the {shape[0]:,}-image array"
            ) from exc
        raise
    return np.load(path, mmap_mode="r+")
