"""Write a dataset store from an :class:`ImportPlan`: parallel, resumable, atomic.

An importer only says *what* to import: one metadata row per source image and a picklable
``decode(row, size)`` function. This module does the rest, the same way for every source:

- images are decoded in worker processes, a chunk at a time, each chunk saved to a staging
  folder (``datasets/.partial-NAME``) as soon as it is done; running the same import again after
  an interruption skips the chunks already there;
- unreadable files are skipped, each one named in the log and in the manifest's notes; if more
  than ``max_unreadable`` of them fail, the import stops, naming the first 20 and writing all
  of them to ``.partial-NAME/unreadable.txt`` (decoded chunks are kept for the retry);
- the finished store is renamed into place in one step, so a crash never leaves a store that
  looks complete;
- disk space is checked before decoding and the image array's blocks are allocated for real
  before it is memory-mapped, so a full disk is a :class:`DiskSpaceError` naming the bytes
  needed and free, never a SIGBUS from writing through the mapping (the decoded chunks are kept
  for the retry).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from trainables.data.store import (
    IMAGES_FILE,
    MANIFEST_FILE,
    META_FILE,
    SPLITS,
    DatasetError,
    Manifest,
    check_name,
    datasets_dir,
    label_counts,
    split_counts,
)

# decode(row, size) -> (uint8 image (H, W), original width, original height). ``size`` is a hint
# (a JPEG decoder may use it to decode at reduced scale); the writer resizes to exactly size.
UNREADABLE_FILE = "unreadable.txt"  # in the staging folder, when too many files fail
Decoder = Callable[[dict, int], tuple[np.ndarray, int, int]]
REQUIRED_COLUMNS = ("image_id", "patient_id", "split", "source_path")
# Free space kept beyond the image bytes: metadata, manifest, filesystem overhead.
DISK_MARGIN = 64 * 2**20
_FULL = (errno.ENOSPC, errno.EDQUOT)  # "the disk is full" and "the disk quota is used up"
# posix_fallocate errors meaning "this filesystem cannot do it": write zeros instead.
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_ZEROS = 8 * 2**20  # bytes per write in the zero-filling fallback


class DiskSpaceError(DatasetError):
    """Not enough free disk space for an import; no store became visible."""


@dataclass(frozen=True)
class ImportPlan:
    name: str
    kind: str
    task: str
    labels: list[str]
    finding_labels: list[str]
    global_label: str
    rows: pd.DataFrame
    decode: Decoder
    synthetic: bool
    source: str
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        missing = [c for c in (*REQUIRED_COLUMNS, *self.labels) if c not in self.rows.columns]
        if missing:
            raise DatasetError(f"import plan for {self.name!r} lacks columns {missing}")
        if self.rows.empty:
            raise DatasetError(f"nothing to import for {self.name!r}: no images found")
        dupes = self.rows["image_id"][self.rows["image_id"].duplicated()]
        if len(dupes):
            raise DatasetError(f"duplicate image ids, e.g. {dupes.iloc[:5].tolist()}")
        bad_split = set(self.rows["split"]) - set(SPLITS)
        if bad_split:
            raise DatasetError(f"unknown split names {sorted(bad_split)}; expected {SPLITS}")
        values = self.rows[self.labels].to_numpy()
        if not np.isin(values, (0, 1)).all():
            raise DatasetError("label columns must hold only 0 and 1")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to ``size x size`` (area averaging when shrinking)."""
    if image.shape == (size, size):
        return image
    pil = Image.fromarray(image)
    shrink = image.shape[0] >= size and image.shape[1] >= size
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(pil.resize((size, size), method), dtype=np.uint8)


def to_uint8(image: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Linearly map ``[low, high]`` (default: the image's min/max) onto 0..255."""
    image = np.asarray(image, dtype=np.float32)
    low = float(image.min()) if low is None else float(low)
    high = float(image.max()) if high is None else float(high)
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((image - low) * scale, 0, 255).round().astype(np.uint8)


def _decode_chunk(decode: Decoder, records: list[dict], size: int, out: str) -> int:
    """Worker: decode one chunk and save it to ``out`` (written atomically)."""
    images = np.zeros((len(records), size, size), dtype=np.uint8)
    orig = np.zeros((len(records), 2), dtype=np.int64)
    ok = np.zeros(len(records), dtype=bool)
    errors = np.full(len(records), "", dtype=object)
    for i, row in enumerate(records):
        try:
            image, width, height = decode(row, size)
            if image.ndim != 2 or image.dtype != np.uint8:
                raise ValueError(f"decoder returned {image.dtype} {image.shape}, not 2-D uint8")
            images[i] = resize_square(image, size)
            orig[i] = (width, height)
            ok[i] = True
        except Exception as exc:  # any failure marks the file unreadable
            errors[i] = f"{type(exc).__name__}: {exc}"[:300]
    tmp = f"{out}.tmp.npz"
    np.savez(tmp, images=images, orig=orig, ok=ok, errors=errors.astype(str))
    os.replace(tmp, out)
    return int((~ok).sum())


def _signature(plan: ImportPlan, size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([plan.kind, plan.name, size, plan.options], sort_keys=True).encode())
    h.update(plan.rows.to_csv(index=False).encode())
    return h.hexdigest()


def _prepare_staging(staging: Path, signature: str, log) -> Path:
    chunks = staging / "chunks"
    sig_file = staging / "signature"
    if staging.exists():
        if sig_file.is_file() and sig_file.read_text() == signature:
            done = len(list(chunks.glob("*.npz")))
            log(f"resuming an interrupted import: {done} chunk(s) already decoded")
            return chunks
        log("found an interrupted import with other options; starting over")
        shutil.rmtree(staging)
    chunks.mkdir(parents=True)
    sig_file.write_text(signature)
    return chunks


def _chunk_is_final(path: Path) -> bool:
    """Chunks with unreadable files are decoded again on resume (the files may be fixed)."""
    if not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as z:
        return bool(z["ok"].all())


def _decode_all(plan, size, chunks, chunk_size, workers, progress) -> list[Path]:
    records = plan.rows.to_dict("records")
    starts = range(0, len(records), chunk_size)
    paths = [chunks / f"{i // chunk_size:06d}.npz" for i in starts]
    todo = [(s, p) for s, p in zip(starts, paths, strict=True) if not _chunk_is_final(p)]
    # Fail now, not hours into decoding: the chunks still to write and the image array exist
    # together until the store is assembled (chunks already written are no longer free space).
    per_image = size * size
    to_decode = sum(len(records[s : s + chunk_size]) for s, _ in todo)
    _check_free(
        plan.name,
        chunks.parent,
        (to_decode + len(records)) * per_image,
        f"decoding {to_decode:,} image(s) and assembling {len(records):,}",
    )
    bar = _progress(len(records), f"import {plan.name}", progress)
    bar.update(len(records) - sum(len(records[s : s + chunk_size]) for s, _ in todo))
    if workers <= 1:
        for s, p in todo:
            _decode_chunk(plan.decode, records[s : s + chunk_size], size, str(p))
            bar.update(len(records[s : s + chunk_size]))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = {
                pool.submit(
                    _decode_chunk, plan.decode, records[s : s + chunk_size], size, str(p)
                ): len(records[s : s + chunk_size])
                for s, p in todo
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        fut.result()
                        bar.update(pending.pop(fut))
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    bar.close()
    return paths


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _disk_full(name: str, staging: Path, needed: int, free: int, what: str) -> DiskSpaceError:
    return DiskSpaceError(
        f"not enough disk space to import {name!r}: {what} needs {_human(needed)} "
        f"({needed:,} bytes) in {staging.parent}, but only {_human(free)} ({free:,} bytes) are "
        "free there. Free up space on that disk, or point CXRKD_HOME at a folder on a bigger "
        f"disk, then run the same command again (images decoded so far are kept in {staging} "
        "and reused when you retry with the same CXRKD_HOME)."
    )


def _free_bytes(folder: Path) -> int:
    return int(shutil.disk_usage(folder).free)


def _check_free(name: str, staging: Path, nbytes: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` unless ``nbytes`` plus a margin are free at ``staging``."""
    free = _free_bytes(staging)
    if free < nbytes + DISK_MARGIN:
        raise _disk_full(name, staging, nbytes + DISK_MARGIN, free, what)


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


def _reserved_memmap(path: Path, shape: tuple[int, ...], name: str) -> np.memmap:
    """Create the ``.npy`` file at ``path`` with all its blocks allocated, then map it.

    Writing through a mapping of a sparse file on a full disk kills the process with SIGBUS;
    writing to allocated blocks cannot fail that way. A full disk raises DiskSpaceError here,
    and ``path`` is removed.
    """
    path.unlink(missing_ok=True)  # from an earlier attempt: its blocks would count as used
    nbytes = int(np.prod(shape))
    _check_free(name, path.parent, nbytes, f"the {shape[0]:,}-image array")
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
        if exc.errno in _FULL:
            raise _disk_full(
                name, path.parent, nbytes, _free_bytes(path.parent), f"the {shape[0]:,}-image array"
            ) from exc
        raise
    return np.load(path, mmap_mode="r+")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr)


def write_store(
    plan: ImportPlan,
    *,
    size: int,
    home: str | os.PathLike | None = None,
    workers: int | None = None,
    chunk_size: int = 128,
    max_unreadable: float = 0.02,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Manifest:
    """Decode ``plan`` into ``$CXRKD_HOME/datasets/<plan.name>`` and return its manifest."""
    if not 8 <= size <= 2048:
        raise DatasetError(f"--size must be between 8 and 2048 px, got {size}")
    check_name(plan.name)
    plan.validate()
    root = datasets_dir(home)
    final = root / plan.name
    if final.exists():
        raise DatasetError(
            f"dataset {plan.name!r} already exists at {final}; pass another --name, or remove "
            f"it first with `cxrkd data rm {plan.name}`"
        )
    staging = root / f".partial-{plan.name}"
    chunks = _prepare_staging(staging, _signature(plan, size), log)
    workers = workers or min(os.cpu_count() or 1, 8)
    try:
        paths = _decode_all(plan, size, chunks, chunk_size, workers, progress)
        return _assemble(plan, size, staging, final, paths, max_unreadable, log)
    except KeyboardInterrupt:
        log(f"interrupted; decoded chunks are kept in {staging}: run the same command to resume")
        raise
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        # The disk filled up anyway (another program wrote to it meanwhile): the same error.
        needed = len(plan.rows) * size * size + DISK_MARGIN
        free = _free_bytes(root)
        raise _disk_full(plan.name, staging, needed, free, "the import (an estimate)") from exc


def _assemble(plan, size, staging, final, paths, max_unreadable, log) -> Manifest:
    oks, origs, errors = [], [], []
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            oks.append(z["ok"])
            origs.append(z["orig"])
            errors.append(z["errors"])
    ok = np.concatenate(oks)
    bad = np.flatnonzero(~ok)
    rows = plan.rows.reset_index(drop=True)
    unreadable_list = staging / UNREADABLE_FILE
    if len(bad):
        messages = np.concatenate(errors)
        lines = [f"{rows['source_path'][i]}: {messages[i]}" for i in bad]
        if len(bad) > max_unreadable * len(rows):
            # Thousands of names do not help in an exception message: the first 20, and a
            # file that names every one of them.
            unreadable_list.write_text("\n".join(lines) + "\n")
            more = (
                f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            ) + f"\nAll {len(bad)} are listed in {unreadable_list}."
            raise DatasetError(
                f"{len(bad)} of {len(rows)} files could not be read (limit "
                f"{max_unreadable:.0%}):\n  " + "\n  ".join(lines[:20]) + f"{more}\nFix or "
                f"remove them and run the same command again; the {int(ok.sum())} decoded "
                f"images are kept in {staging}."
            )
        # At most max_unreadable of the files (2%: about 120 of Kaggle's 5,856): name them all.
        log(f"skipped {len(bad)} unreadable file(s):\n  " + "\n  ".join(lines))
    unreadable_list.unlink(missing_ok=True)  # a list left by an earlier, failed attempt
    meta = rows[ok].copy()
    orig = np.concatenate(origs)[ok]
    meta["orig_width"], meta["orig_height"] = orig[:, 0], orig[:, 1]
    meta = meta.reset_index(drop=True)

    images = _reserved_memmap(staging / IMAGES_FILE, (len(meta), size, size), plan.name)
    digest = hashlib.blake2b(digest_size=16)
    at = 0
    for p, keep in zip(paths, oks, strict=True):
        with np.load(p, allow_pickle=False) as z:
            block = z["images"][keep]
        images[at : at + len(block)] = block
        digest.update(np.ascontiguousarray(block).tobytes())
        at += len(block)
    images.flush()
    del images
    digest.update(meta[["image_id", "split", *plan.labels]].to_csv(index=False).encode())
    meta.to_parquet(staging / META_FILE, index=False)

    notes = list(plan.notes)
    if len(bad):
        names = ", ".join(map(str, rows["image_id"].iloc[bad]))
        notes.append(f"skipped {len(bad)} unreadable file(s): {names}")
    manifest = Manifest(
        name=plan.name,
        kind=plan.kind,
        task=plan.task,
        labels=list(plan.labels),
        finding_labels=list(plan.finding_labels),
        global_label=plan.global_label,
        splits=split_counts(meta),
        label_counts=label_counts(meta, plan.labels),
        resolution=size,
        fingerprint=digest.hexdigest(),
        synthetic=plan.synthetic,
        n_images=len(meta),
        source=plan.source,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        options=dict(plan.options, size=size),
        notes=notes,
    )
    (staging / MANIFEST_FILE).write_text(manifest.to_json())
    shutil.rmtree(staging / "chunks")
    (staging / "signature").unlink()
    os.replace(staging, final)  # the one step that makes the store visible
    return manifest
