"""Write a small Kaggle "Chest X-Ray Images (Pneumonia)"-style tree of real JPEGs, with quirks.

Counts, by construction (``quirks=True``), before the importer's choices:

- train/NORMAL     14 patients x 1 image + NORMAL2-IM-0381 x 2 + IM-0300-0001.png
                   + IM-0200-0001 (byte copy of test/NORMAL/IM-0003-0001)           = 18 files
- train/PNEUMONIA  person1000 (bacteria + virus) + 14 bacteria + 6 virus patients
                   + person1001 copy (person1050_bacteria_2999) + person1_bacteria_1 (patient also
                   in test) + scan_0042 (unparseable) + person1060_virus_1700.jpg
                   + person1070_bacteria_3000 (corrupt)                                = 27 files
- val              NORMAL2-IM-1427, NORMAL2-IM-1430, person1946 x 2                    = 4 files
- test             8 NORMAL + 8 PNEUMONIA (person1 has two virus images)               = 16 files

plus macOS litter (``__MACOSX/``, ``.DS_Store``, ``._*``) and a nested ``chest_xray/chest_xray/``
copy holding a ``.txt`` that would be rejected if the importer looked inside it.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

DUPLICATE_IN_TRAIN = "train/PNEUMONIA/person1050_bacteria_2999.jpeg"  # = person1001_bacteria_2932
DUPLICATE_OF_TEST = "train/NORMAL/IM-0200-0001.jpeg"  # = test/NORMAL/IM-0003-0001
LEAKED_PATIENT_FILE = "train/PNEUMONIA/person1_bacteria_1.jpeg"  # person1 is in test
UNPARSEABLE = "train/PNEUMONIA/scan_0042.jpeg"
CORRUPT = "train/PNEUMONIA/person1070_bacteria_3000.jpeg"
PNG_FILE = "train/NORMAL/IM-0300-0001.png"
JPG_FILE = "train/PNEUMONIA/person1060_virus_1700.jpg"


def image_bytes(*, width: int, height: int, rgb: bool, seed: int, fmt: str = "JPEG") -> bytes:
    """A small noisy radiograph-like image (a vertical gradient plus noise), encoded."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(40, 200, height, dtype=np.float32)[:, None]
    pixels = np.clip(gradient + rng.normal(0, 30, (height, width)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "L")
    if rgb:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _names(quirks: bool) -> dict[str, list[str]]:
    train_normal = [f"IM-{115 + 2 * k:04d}-0001.jpeg" for k in range(14)]
    train_normal += ["NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381-0002.jpeg"]
    train_pneu = ["person1000_bacteria_2931.jpeg", "person1000_virus_1681.jpeg"]
    train_pneu += [f"person{1001 + k}_bacteria_{2932 + k}.jpeg" for k in range(14)]
    train_pneu += [f"person{1020 + k}_virus_{1690 + k}.jpeg" for k in range(6)]
    test_normal = ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg", "IM-0005-0001.jpeg"]
    test_normal += ["NORMAL2-IM-0007-0001.jpeg", "NORMAL2-IM-0008-0001.jpeg"]
    test_normal += ["IM-0010-0001.jpeg", "IM-0011-0001.jpeg", "IM-0013-0001.jpeg"]
    test_pneu = ["person100_bacteria_475.jpeg", "person100_bacteria_477.jpeg"]
    test_pneu += ["person1_virus_6.jpeg", "person1_virus_7.jpeg", "person101_bacteria_483.jpeg"]
    test_pneu += ["person102_virus_190.jpeg", "person103_bacteria_490.jpeg"]
    test_pneu += ["person104_bacteria_491.jpeg"]
    names = {
        "train/NORMAL": train_normal,
        "train/PNEUMONIA": train_pneu,
        "val/NORMAL": ["NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1430-0001.jpeg"],
        "val/PNEUMONIA": ["person1946_bacteria_4874.jpeg", "person1946_bacteria_4875.jpeg"],
        "test/NORMAL": test_normal,
        "test/PNEUMONIA": test_pneu,
    }
    if quirks:
        names["train/PNEUMONIA"] += [Path(p).name for p in (LEAKED_PATIENT_FILE, UNPARSEABLE)]
    return names


def write_kaggle_tree(base: Path, *, quirks: bool = True) -> Path:
    """Write ``base/chest_xray/...`` and return ``base`` (the SRC a user would pass)."""
    root = base / "chest_xray"
    seed = 0
    for folder, names in _names(quirks).items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            seed += 1
            size = {"width": 56 + seed % 17, "height": 70 + seed % 23}
            (root / folder / name).write_bytes(image_bytes(**size, rgb=seed % 3 == 0, seed=seed))
    if not quirks:
        return base

    shutil.copyfile(
        root / "train/PNEUMONIA/person1001_bacteria_2932.jpeg", root / DUPLICATE_IN_TRAIN
    )
    shutil.copyfile(root / "test/NORMAL/IM-0003-0001.jpeg", root / DUPLICATE_OF_TEST)
    (root / PNG_FILE).write_bytes(image_bytes(width=64, height=77, rgb=True, seed=900, fmt="PNG"))
    (root / JPG_FILE).write_bytes(image_bytes(width=61, height=83, rgb=False, seed=901))
    (root / CORRUPT).write_bytes(image_bytes(width=60, height=80, rgb=False, seed=902)[:1500])

    # macOS litter, at the top and inside class folders, and the nested duplicate copy.
    for litter in (
        "__MACOSX/train/NORMAL/._IM-0115-0001.jpeg",
        "train/PNEUMONIA/__MACOSX/._a.jpeg",
    ):
        (root / litter).parent.mkdir(parents=True, exist_ok=True)
        (root / litter).write_bytes(b"\x00\x05\x16\x07 not an image")
    for store in (".DS_Store", "train/.DS_Store", "train/NORMAL/.DS_Store"):
        (root / store).write_bytes(b"Bud1 not an image")
    (root / "train/NORMAL/._IM-0115-0001.jpeg").write_bytes(b"\x00\x05\x16\x07 not an image")
    nested = root / "chest_xray/train/NORMAL"
    nested.mkdir(parents=True)
    (nested / "IM-0115-0001.jpeg").write_bytes(
        (root / "train/NORMAL/IM-0115-0001.jpeg").read_bytes()
    )
    (nested / "readme.txt").write_text("the nested copy must be ignored")
    return base
