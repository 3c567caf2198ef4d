"""Images/s served to a training loop: torchvision ImageFolder (decode every epoch) vs the store.

Run: ``.venv/bin/python bench/store_vs_imagefolder.py [--n 600]``. In one run it

1. writes ``n`` Kaggle-sized grayscale JPEGs (about 1000 x 1300, quality 90, with lung-field
   shapes, rib stripes and noise so they compress like radiographs, not like flat images) in a
   Kaggle layout in a temporary folder;
2. imports them with ``import_dataset("kaggle-pneumonia", ...)`` (2 workers) and times it;
3. times (a) ``ImageFolder`` + PIL decode + ``Resize((224, 224))`` + ``ToTensor`` through a
   ``DataLoader`` (num_workers=0, batch 32) and (b) :class:`trainables.data.pipeline.BatchLoader`
   batches from the memory-mapped store, both with ``torch.set_num_threads(1)``, i.e. one core.

Both sides end at a float32 CPU tensor batch in [0, 1]; the store side skips decoding and
resizing because the import did them once. The JPEGs and the store are both in the page cache
when timed (warm), so neither side pays for disk reads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BATCH = 32


def radiograph(rng: np.random.Generator) -> Image.Image:
    """A grayscale ~1000 x 1300 image with radiograph-like structure at several scales."""
    width, height = int(rng.integers(950, 1050)), int(rng.integers(1250, 1350))
    coarse = rng.normal(0, 1, (12, 10)).astype(np.float32)
    base = np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.BICUBIC))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 150 + 25 * base
    for cx in (0.32, 0.68):  # two darker lung fields
        lung = ((x / width - cx) / 0.17) ** 2 + ((y / height - 0.48) / 0.3) ** 2 < 1
        image -= 70 * lung
    image += 12 * np.sin(y / height * 2 * np.pi * 9 + 3 * np.sin(x / width * np.pi))  # ribs
    image += rng.normal(0, 4, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "L")


def write_jpegs(root: Path, n: int, *, seed: int = 0) -> float:
    """Write a Kaggle tree of ``n`` JPEGs (10% in test); return the mean file size in KB."""
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(n):
        split = "test" if i % 20 in (0, 1) else "train"
        pneumonia = i % 2 == 1
        cls = "PNEUMONIA" if pneumonia else "NORMAL"
        name = f"person{i}_bacteria_{i}.jpeg" if pneumonia else f"IM-{i:04d}-0001.jpeg"
        path = root / "chest_xray" / split / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        radiograph(rng).save(path, "JPEG", quality=90)
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1024


def time_imagefolder(folder: Path, size: int) -> tuple[float, int]:
    """(images/s, images) of one epoch of ImageFolder through a single-process DataLoader."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += x.shape[0]
    return seen / (time.perf_counter() - start), seen


def time_store(images: np.ndarray, labels: np.ndarray, min_seconds: float) -> tuple[float, int]:
    """(images/s, images) of whole BatchLoader epochs over the store, for at least min_seconds."""
    from cxrkd.trainables.data.pipeline import BatchLoader

    loader = BatchLoader(images, labels, batch_size=BATCH, shuffle=True, device="cpu")
    for _ in loader:  # one warm-up epoch: page cache, allocator
        pass
    start, seen = time.perf_counter(), 0
    while seen == 0 or time.perf_counter() - start < min_seconds:
        for x, _ in loader:
            seen += x.shape[0]
    return seen / (time.perf_counter() - start), seen


def time_decoders(paths: list[Path], size: int) -> tuple[float, float]:
    """Mean ms per file to decode and resize to ``size``: the importer's way vs a full decode."""
    from cxrkd.trainables.data.import_plan import resize_square
    from cxrkd.trainables.data.jpeg import decode_image_file

    def reduced(path: Path) -> np.ndarray:
        return resize_square(decode_image_file({"source_path": str(path)}, size)[0], size)

    def full(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return resize_square(np.asarray(image.convert("L")), size)

    ms = {}
    for decode in (full, reduced, full, reduced):  # twice each: the first pass warms the cache
        start = time.perf_counter()
        for p in paths:
            decode(p)
        ms[decode.__name__] = (time.perf_counter() - start) / len(paths) * 1e3
    return ms["reduced"], ms["full"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600, help="JPEGs to write (default 600)")
    parser.add_argument("--size", type=int, default=224, help="image side in px (default 224)")
    parser.add_argument("--workers", type=int, default=2, help="import workers (default 2)")
    parser.add_argument("--store-seconds", type=float, default=3.0, help="store timing length")
    args = parser.parse_args(argv)
    if args.n < 20:
        parser.error(f"--n must be at least 20 (both classes in train and test), got {args.n}")

    from cxrkd.trainables.data.importers import import_dataset
    from cxrkd.trainables.data.store import DatasetStore

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="cxrkd-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        kb = write_jpegs(tmp / "src", args.n)
        print(
            f"wrote {args.n} JPEGs (~1000x1300, q90, mean {kb:.0f} KB) in "
            f"{time.perf_counter() - start:.1f} s"
        )

        start = time.perf_counter()
        manifest = import_dataset(
            "kaggle-pneumonia",
            str(tmp / "src"),
            home=tmp / "home",
            size=args.size,
            workers=args.workers,
            progress=False,
        )
        seconds = time.perf_counter() - start
        print(
            f"import ({args.workers} workers, {args.size}px): {manifest.n_images} images in "
            f"{seconds:.1f} s = {manifest.n_images / seconds:.0f} images/s"
        )
        draft_ms, full_ms = time_decoders(sorted((tmp / "src").rglob("*.jpeg"))[:40], args.size)
        print(
            f"decode + resize to {args.size}px per file: reduced-scale {draft_ms:.1f} ms vs full "
            f"{full_ms:.1f} ms "
            f"({full_ms / draft_ms:.1f}x)"
        )

        folder_rate, folder_n = time_imagefolder(tmp / "src" / "chest_xray" / "train", args.size)
        print(
            f"(a) ImageFolder + PIL + Resize + ToTensor, 1 thread: {folder_rate:.0f} images/s "
            f"({folder_n} images)"
        )
        store = DatasetStore.open(manifest.name, tmp / "home")
        store_rate, store_n = time_store(store.images, store.label_matrix(), args.store_seconds)
        print(
            f"(b) store (memory map) + BatchLoader, 1 thread: {store_rate:.0f} images/s "
            f"({store_n} images)"
        )
        print(f"ratio (b)/(a): {store_rate / folder_rate:.0f}x (goal: at least 50x)")


if __name__ == "__main__":
    main()
