"""Write a Kaggle "Chest X-Ray Images (Pneumonia)"-style tree of real JPEGs: SYNTHETIC pictures
with the real layout, the real file-name patterns and the real quirks.

What it reproduces (see /work/shared/REAL_DATA.md):

- ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``; ``person<N>_{bacteria,virus}_<M>``,
  ``IM-<P>-<K>`` and ``NORMAL2-IM-<P>-<K>`` names, several images per patient, one person with
  both a bacteria and a virus film;
- the person numbering restarts in the test folder (train persons 1..P, the official val
  P+1.., test 1..Q again), while normal ``IM-``/``NORMAL2-IM-`` numbers of train (from 115 /
  383) and test (from 1 / 7) do not overlap, as in the real set;
- with ``quirks=True``, besides those: a byte copy inside train (:data:`DUPLICATE_IN_TRAIN`),
  a train copy of a test file (:data:`DUPLICATE_OF_TEST`), a copy inside test
  (:data:`DUPLICATE_IN_TEST`), a PNG, a ``.jpg``, an unparseable name, a corrupt JPEG, macOS
  litter (6 entries: ``__MACOSX/``, ``.DS_Store``, ``._*``) and a nested ``chest_xray/chest_xray/``
  copy holding a ``.txt`` that would be rejected if the importer looked inside it.

Pictures are synthetic radiograph-like images of varied size (and some RGB): dark lung fields
on a grey body; PNEUMONIA films add bright blurred opacities in the lungs, a class signal a
small CNN learns within a few steps at 32-64 px. Not real patients.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# Quirk files (quirks=True), added to the generated ones; numbers outside the generated ranges.
DUPLICATE_IN_TRAIN = "train/PNEUMONIA/person1_bacteria_1000.jpeg"  # = person1_bacteria_1
DUPLICATE_IN_TRAIN_OF = "train/PNEUMONIA/person1_bacteria_1.jpeg"  # sorts first: it is kept
DUPLICATE_OF_TEST = "train/NORMAL/IM-0990-0001.jpeg"  # = test/NORMAL/IM-0001-0001
DUPLICATE_OF_TEST_OF = "test/NORMAL/IM-0001-0001.jpeg"
DUPLICATE_IN_TEST = "test/NORMAL/NORMAL2-IM-0380-0001.jpeg"  # = NORMAL2-IM-0007-0001
DUPLICATE_IN_TEST_OF = "test/NORMAL/NORMAL2-IM-0007-0001.jpeg"
UNPARSEABLE = "train/PNEUMONIA/scan_0042.jpeg"
CORRUPT = "train/PNEUMONIA/person1901_bacteria_3901.jpeg"
PNG_FILE = "train/NORMAL/IM-0995-0001.png"  # 64 x 77, RGB
JPG_FILE = "train/PNEUMONIA/person1900_virus_3900.jpg"
QUIRK_FILES = (
    DUPLICATE_IN_TRAIN,
    DUPLICATE_OF_TEST,
    DUPLICATE_IN_TEST,
    UNPARSEABLE,
    CORRUPT,
    PNG_FILE,
    JPG_FILE,
)
MACOS_LITTER = 6  # entries the importer reports as ignored
_IMAGES_PER_PATIENT = (2, 1, 1, 3, 1, 2, 1)  # cycled; the first patient has two films
_QUIRK_PERSONS = 1900  # generated pneumonia person numbers stay below this


def radiograph(width: int, height: int, *, pneumonia: bool, seed: int) -> np.ndarray:
    """A uint8 (height, width) chest-like picture; ``pneumonia`` adds bright lung opacities."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    lungs = np.zeros((height, width), dtype=bool)
    for cx in (0.3, 0.7):
        lungs |= ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    pixels = 70 + 100 * yy + rng.normal(0, 12, (height, width)).astype(np.float32)
    pixels[lungs] -= 55
    if pneumonia:  # 2-3 blurred opacities inside the lung fields
        for _ in range(int(rng.integers(2, 4))):
            cx = rng.choice((0.3, 0.7)) + rng.uniform(-0.06, 0.06)
            cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.08, 0.14)
            pixels += 95 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def image_bytes(
    *,
    width: int,
    height: int,
    rgb: bool,
    seed: int,
    fmt: str = "JPEG",
    pneumonia: bool = False,
) -> bytes:
    """:func:`radiograph`, encoded (JPEG quality 90 or PNG), as grey or RGB."""
    image = Image.fromarray(radiograph(width, height, pneumonia=pneumonia, seed=seed), "L")
    if rgb:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _patient_sizes(n_images: int) -> list[int]:
    """Images per patient, cycling :data:`_IMAGES_PER_PATIENT`, summing to ``n_images``."""
    sizes, k = [], 0
    while sum(sizes) < n_images:
        sizes.append(min(_IMAGES_PER_PATIENT[k % len(_IMAGES_PER_PATIENT)], n_images - sum(sizes)))
        k += 1
    return sizes


def pneumonia_names(n_images: int, *, first_person: int) -> list[str]:
    """``person<N>_{bacteria,virus}_<M>.jpeg``: persons numbered from ``first_person``; every
    fourth person mixes pathogens (the first has a bacteria and a virus film)."""
    names, counter = [], {"bacteria": 0, "virus": 0}
    for k, n in enumerate(_patient_sizes(n_images)):
        for j in range(n):
            if k % 4 == 0:
                pathogen = ("bacteria", "virus")[j % 2]
            else:
                pathogen = "virus" if k % 3 == 1 else "bacteria"
            counter[pathogen] += 1
            names.append(f"person{first_person + k}_{pathogen}_{counter[pathogen]}.jpeg")
    return names


def normal_names(n_images: int, *, im_from: int, normal2_from: int) -> list[str]:
    """``IM-<P>-<K>.jpeg`` and ``NORMAL2-IM-<P>-<K>.jpeg`` patients, alternating."""
    names, next_number = [], {"IM": im_from, "NORMAL2-IM": normal2_from}
    for k, n in enumerate(_patient_sizes(n_images)):
        prefix = ("IM", "NORMAL2-IM")[k % 2]
        number = next_number[prefix]
        next_number[prefix] += 1 + k % 3  # gaps, as in the real numbering
        names += [f"{prefix}-{number:04d}-{j + 1:04d}.jpeg" for j in range(n)]
    return names


def kaggle_names(
    *, n_per_class_train: int, n_per_class_test: int, n_val_per_class: int
) -> dict[str, list[str]]:
    """``{"train/NORMAL": [file names], ...}`` of the generated (non-quirk) files."""
    train_pneumonia = pneumonia_names(n_per_class_train, first_person=1)
    last_train_person = len(_patient_sizes(n_per_class_train))
    names = {
        "train/NORMAL": normal_names(n_per_class_train, im_from=115, normal2_from=383),
        "train/PNEUMONIA": train_pneumonia,
        "val/NORMAL": normal_names(n_val_per_class, im_from=1427, normal2_from=1430),
        "val/PNEUMONIA": pneumonia_names(n_val_per_class, first_person=last_train_person + 1),
        "test/NORMAL": normal_names(n_per_class_test, im_from=1, normal2_from=7),
        "test/PNEUMONIA": pneumonia_names(n_per_class_test, first_person=1),  # restarts at 1
    }
    last_person = last_train_person + len(_patient_sizes(n_val_per_class))
    generated = {f"{folder}/{name}" for folder, files in names.items() for name in files}
    numbers = {
        split: max(int(n.split("-")[-2]) for n in names[f"{split}/NORMAL"] or ["IM-0-0"])
        for split in ("train", "test")
    }
    if (
        last_person >= _QUIRK_PERSONS
        or numbers["train"] >= 990
        or numbers["test"] >= 115
        or generated & set(QUIRK_FILES)
    ):
        raise ValueError(
            f"n_per_class_train={n_per_class_train}, n_per_class_test={n_per_class_test} are "
            "too large for the real numbering ranges; use at most 950 and 170"
        )
    return names


def write_kaggle_tree(
    root: str | Path,
    *,
    n_per_class_train: int = 16,
    n_per_class_test: int = 8,
    n_val_per_class: int = 8,
    size: tuple[int, int] = (48, 96),
    seed: int = 0,
    quirks: bool = True,
) -> Path:
    """Write ``root/chest_xray/...`` (SYNTHETIC pictures, see the module docstring); return
    ``root``, the SRC a user would pass to ``cxrkd data import kaggle-pneumonia``.

    Generated: ``n_per_class_train`` NORMAL and as many PNEUMONIA files in train, likewise
    ``n_val_per_class`` in val and ``n_per_class_test`` in test; each picture's width and height
    are drawn from ``size`` (px, inclusive). ``quirks=True`` adds the :data:`QUIRK_FILES`
    (three byte copies, a PNG, a ``.jpg``, an unparseable name, a corrupt file), the macOS
    litter and the nested copy. 400 files of up to 96 px take about a second.
    """
    root = Path(root)
    tree = root / "chest_xray"
    rng = np.random.default_rng(seed)
    names = kaggle_names(
        n_per_class_train=n_per_class_train,
        n_per_class_test=n_per_class_test,
        n_val_per_class=n_val_per_class,
    )
    for folder, files in names.items():
        (tree / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            width, height = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
            data = image_bytes(
                width=width,
                height=height,
                rgb=rng.random() < 0.3,
                seed=int(rng.integers(2**31)),
                pneumonia=folder.endswith("PNEUMONIA"),
            )
            (tree / folder / name).write_bytes(data)
    if quirks:
        _write_quirks(tree)
    return root


def _write_quirks(tree: Path) -> None:
    for copy, original in (
        (DUPLICATE_IN_TRAIN, DUPLICATE_IN_TRAIN_OF),
        (DUPLICATE_OF_TEST, DUPLICATE_OF_TEST_OF),
        (DUPLICATE_IN_TEST, DUPLICATE_IN_TEST_OF),
    ):
        shutil.copyfile(tree / original, tree / copy)
    png = image_bytes(width=64, height=77, rgb=True, seed=900, fmt="PNG")
    (tree / PNG_FILE).write_bytes(png)
    jpg = image_bytes(width=61, height=83, rgb=False, seed=901, pneumonia=True)
    (tree / JPG_FILE).write_bytes(jpg)
    unparseable = image_bytes(width=58, height=70, rgb=False, seed=903, pneumonia=True)
    (tree / UNPARSEABLE).write_bytes(unparseable)
    corrupt = image_bytes(width=60, height=80, rgb=False, seed=902, pneumonia=True)
    (tree / CORRUPT).write_bytes(corrupt[: len(corrupt) // 3])

    # macOS litter, at the top and inside class folders, and the nested duplicate copy.
    for litter in (
        "__MACOSX/train/NORMAL/._IM-0115-0001.jpeg",
        "train/PNEUMONIA/__MACOSX/._a.jpeg",
    ):
        (tree / litter).parent.mkdir(parents=True, exist_ok=True)
        (tree / litter).write_bytes(b"\x00\x05\x16\x07 not an image")
    for store in (".DS_Store", "train/.DS_Store", "train/NORMAL/.DS_Store"):
        (tree / store).write_bytes(b"Bud1 not an image")
    (tree / "train/NORMAL/._IM-0115-0001.jpeg").write_bytes(b"\x00\x05\x16\x07 not an image")
    nested = tree / "chest_xray/train/NORMAL"
    nested.mkdir(parents=True)
    shutil.copyfile(tree / "train/NORMAL/IM-0115-0001.jpeg", nested / "IM-0115-0001.jpeg")
    (nested / "readme.txt").write_text("the nested copy must be ignored")
