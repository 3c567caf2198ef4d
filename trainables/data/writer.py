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
  before it is memory-mapped (:mod:`trainables.data.disk_space`), so a full disk is a
  :class:`DiskSpaceError` naming the bytes needed and free, never a SIGBUS from writing through
  the mapping (the decoded chunks are kept for the retry).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from cxrkd.trainables.data.disk_space import (
    DISK_MARGIN,
    FULL_DISK_ERRNOS,
    check_free,
    disk_full_error,
    free_bytes,
    reserved_memmap,
)
from cxrkd.trainables.data.import_plan import Decoder, ImportPlan, resize_square
from cxrkd.trainables.data.store import (
    IMAGES_FILE,
    MANIFEST_FILE,
    META_FILE,
    DatasetError,
    Manifest,
    check_name,
    datasets_dir,
    label_counts,
    split_counts,
)

UNREADABLE_FILE = "unreadable.txt"  # in the staging folder, when too many files fail


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
    check_free(
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
        if exc.errno not in FULL_DISK_ERRNOS:
            raise
        # The disk filled up anyway (another program wrote to it meanwhile): the same error.
        needed = len(plan.rows) * size * size + DISK_MARGIN
        free = free_bytes(root)
        raise disk_full_error(plan.name, staging, needed, free, "the import (an estimate)") from exc


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

    images = reserved_memmap(staging / IMAGES_FILE, (len(meta), size, size), plan.name)
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
