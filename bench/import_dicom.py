"""Import throughput of VinDr-style JPEG 2000 DICOMs (12-bit, ~2000x2500) into a store.

Three decoders are timed side by side on the same files, in one run:

- ``reduced``: the importer's decoder (JPEG 2000 decoded at 1/2^r scale, r chosen so both
  sides stay >= the stored size);
- ``full``: the same decoder forced to decode at full resolution;
- ``pydicom``: ``ds.pixel_array`` (pylibjpeg-openjpeg) then the same window/inversion.

Encoding a 2000x2500 12-bit image takes ~0.7 s, so only ``--unique`` distinct images are
encoded and copied to ``--n`` files (the decode work per file is the same; the OS page cache
holds the files in every variant alike). Run from the repository root:

    .venv/bin/python bench/import_dicom.py --n 100 --workers 2 --size 224
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def decode_full(row: dict, size: int):
    from cxrkd.trainables.data.dicom import decode_dicom

    return decode_dicom(row, 1 << 20)  # no reduction possible: a full-resolution decode


def decode_pydicom(row: dict, size: int):
    import pydicom

    from cxrkd.trainables.data.dicom import display_image

    ds = pydicom.dcmread(row["source_path"])
    return display_image(ds.pixel_array, ds), int(ds.Columns), int(ds.Rows)


def make_tree(root: Path, *, n: int, unique: int, rows: int, cols: int) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from fixtures_dicom import chest_values, write_dicom, write_label_csvs

    n_test = max(2, n // 10)
    train = {f"tr{i:05d}": [[], [], ["Nodule/Mass"]] for i in range(n - n_test)}
    test = {f"te{i:05d}": [] for i in range(n_test)}
    write_label_csvs(root, train=train, test=test)
    rng = np.random.default_rng(0)
    sources = []
    for u in range(unique):
        stored = chest_values(rows, cols, bits=12, lungs_high=u % 2 == 1)
        noise = rng.normal(0, 25, stored.shape)  # detector noise: realistic compressed sizes
        stored = (stored + noise).clip(0, 4095).astype(np.uint16)
        photometric = "MONOCHROME1" if u % 2 else "MONOCHROME2"
        sources.append(
            write_dicom(
                root / f"src{u}.dicom", stored, photometric=photometric, window=(2048.0, 3000.0)
            )
        )
    for split in ("train", "test"):
        (root / split).mkdir()
    for i, image_id in enumerate([*train, *test]):
        split = "train" if image_id in train else "test"
        shutil.copy(sources[i % unique], root / split / f"{image_id}.dicom")
    for source in sources:
        source.unlink()
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="DICOM files to import")
    parser.add_argument("--unique", type=int, default=6, help="distinct images encoded")
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--cols", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from cxrkd.trainables.data.vindr import plan_vindr
    from cxrkd.trainables.data.writer import write_store

    work = Path(tempfile.mkdtemp(prefix="bench_dicom_"))
    try:
        t0 = time.perf_counter()
        src = make_tree(
            work / "vindr", n=args.n, unique=args.unique, rows=args.rows, cols=args.cols
        )
        mb = sum(p.stat().st_size for p in src.glob("*/*.dicom")) / args.n / 1e6
        print(
            f"{args.n} files ({args.unique} distinct) {args.cols}x{args.rows} 12-bit JPEG 2000 "
            f"lossless, {mb:.1f} MB each; written in {time.perf_counter() - t0:.1f} s"
        )
        t0 = time.perf_counter()
        plan = plan_vindr(str(src))
        plan_s = time.perf_counter() - t0
        print(
            f"plan (headers of every file + 1 probe decode): {plan_s:.2f} s "
            f"= {1000 * plan_s / args.n:.1f} ms/file"
        )
        for label, decode in (
            ("reduced", plan.decode),
            ("full", decode_full),
            ("pydicom", decode_pydicom),
        ):
            variant = type(plan)(**{**plan.__dict__, "decode": decode, "name": f"b-{label}"})
            t0 = time.perf_counter()
            write_store(
                variant,
                size=args.size,
                home=work / "home",
                workers=args.workers,
                chunk_size=16,
                progress=False,
                log=lambda msg: None,
            )
            seconds = time.perf_counter() - t0
            print(
                f"{label:8s} {args.n / seconds:7.2f} images/s  ({seconds:.1f} s, "
                f"{args.workers} workers, stored at {args.size} px)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
