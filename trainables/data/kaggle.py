"""Importer for Kaggle's "Chest X-Ray Images (Pneumonia)" (Kermany et al., 5,856 JPEGs).

Layout as downloaded: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``. The archive also
carries macOS litter (``__MACOSX/``, ``.DS_Store``, ``._*``) and a nested duplicate copy
``chest_xray/chest_xray/``; both are ignored. What this planner decides, and why:

- Byte-identical files are imported once (the first by path, the test copy where one is in
  test), so the same picture cannot sit in train and test.
- Patient ids come from file names: ``person<N>_{bacteria,virus}_<M>`` -> ``person<N>`` (the
  person number is shared across pathogens: ``person1000_bacteria_2931`` and
  ``person1000_virus_1681`` are one patient); ``[NORMAL2-]IM-<P>-<K>`` -> ``[NORMAL2-]IM-<P>``.
- The person numbering restarts in the test folder (pneumonia: train 1-1945, official val
  1946-1954, test 1-1685), so ``person5`` of test is another child than ``person5`` of train.
  Patients are therefore grouped within train + official val only, and test patient ids are
  scoped to their split: ``test/person5``, ``test/IM-0001``. No training image is dropped
  because its number also occurs in test.
- Symbolic links anywhere in ``train/``, ``val/`` or ``test/`` are refused before any file is
  read (:mod:`trainables.data.source_tree`).
- The official val split (16 images) is too small to select models on; it is folded into train
  and a patient-grouped validation set is drawn from the pool. The official test split is kept
  as is.

``IMPORTER_VERSION`` is stored in the manifest's options, so ``--exist-ok`` does not reuse a
store made by an earlier version (version 1 dropped every train image whose person number also
occurred in test: hundreds of pneumonia images on the real download).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from pathlib import Path

import pandas as pd

from cxrkd.trainables.data.import_plan import ImportPlan
from cxrkd.trainables.data.jpeg import decode_image_file
from cxrkd.trainables.data.source_tree import refuse_symlinks, walk_files
from cxrkd.trainables.data.splits import assert_patient_disjoint, grouped_validation
from cxrkd.trainables.data.store import DatasetError

KIND = "kaggle-pneumonia"
LABEL = "pneumonia"
CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}
OFFICIAL_SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
ACCEPTED_EXTENSIONS = (".jpeg", ".jpg", ".png")
_PERSON = re.compile(r"(person\d+)_(bacteria|virus)_\d+")
_NORMAL = re.compile(r"((?:NORMAL2-)?IM-\d+)-\d+")
_EXAMPLES = 5
# 2: patient ids of test are scoped ("test/person5"); train images are no longer dropped for a
# test patient with the same number. Bump when a change alters which rows or ids an import keeps.
IMPORTER_VERSION = 2
TEST_PREFIX = "test/"


def plan_kaggle(
    src: str, *, name: str | None = None, val_fraction: float = 0.1, seed: int = 0
) -> ImportPlan:
    """Plan the import of a Kaggle pneumonia download at ``src`` (see the module docstring)."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(
            f"val_fraction must be in (0, 1), got {val_fraction}; e.g. 0.1 moves about 10% of "
            "the train patients to validation"
        )
    root = find_root(src)
    rows, notes = scan_tree(root)
    rows, dup_notes = drop_duplicates(rows)
    notes += dup_notes
    rows, patient_notes = assign_patients(rows)
    notes += patient_notes

    rows["split"] = rows["official_split"].where(rows["official_split"] == "test", "train")
    n_val_official = int((rows["official_split"] == "val").sum())
    rows = grouped_validation(rows, fraction=val_fraction, seed=seed)
    assert_patient_disjoint(rows)
    pool = rows[rows["split"] != "test"]
    folded = (
        f"folded the official val split ({n_val_official} images) into train"
        if n_val_official
        else "found no official val split (chest_xray/val/)"
    )
    notes.append(
        f"{folded}; validation is "
        f"{int((pool['split'] == 'val').sum())} of {len(pool)} train images, grouped by patient "
        f"(val_fraction={val_fraction}, seed={seed}); the official test split is kept as is"
    )
    columns = ["image_id", "patient_id", "split", "source_path", LABEL, "official_split"]
    return ImportPlan(
        name=name or KIND,
        kind=KIND,
        task="binary",
        labels=[LABEL],
        finding_labels=[],
        global_label=LABEL,
        rows=rows[[*columns, "pathogen"]].reset_index(drop=True),
        decode=decode_image_file,
        synthetic=False,
        source=str(root),
        options={
            "val_fraction": val_fraction,
            "seed": seed,
            "importer_version": IMPORTER_VERSION,
        },
        notes=notes,
    )


def find_root(src: str) -> Path:
    """The folder holding ``train/`` and ``test/``: ``src`` itself or ``src/chest_xray``."""
    path = Path(src).expanduser()
    expected = (
        "expected SRC/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (SRC being the folder "
        "the Kaggle download was unzipped into), or SRC being chest_xray/ itself"
    )
    if not path.exists():
        raise DatasetError(
            f"SRC {str(src)!r} does not exist; {expected}. Check the path, or download and "
            "unzip the dataset first"
        )
    if path.is_file():
        raise DatasetError(
            f"SRC {str(src)!r} is a file, not a folder; unzip it first (e.g. `unzip "
            f"{path.name} -d DIR`) and pass DIR; {expected}"
        )
    for candidate in (path, path / "chest_xray"):
        if all((candidate / split).is_dir() for split in REQUIRED_SPLITS):
            if candidate != path:  # SRC itself may be a link; a link inside it may not
                refuse_symlinks(path.resolve(), [path.resolve() / candidate.name])
            return candidate.resolve()
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if (path / "chest_xray").is_dir():
        found += sorted(f"chest_xray/{p.name}" for p in (path / "chest_xray").iterdir())
    shown = found[:15] + ([f"... {len(found) - 15} more"] if len(found) > 15 else [])
    raise DatasetError(
        f"{path} does not have the Kaggle 'Chest X-Ray Images (Pneumonia)' layout: {expected}; "
        f"found {shown or 'an empty folder'}. Pass the folder that contains train/ and test/ "
        "(or its parent)"
    )


def _is_macos_litter(name: str) -> bool:
    return name == "__MACOSX" or name.startswith(".")


def scan_tree(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per image file under ``root/{train,val,test}``; raises on bad content."""
    records, unsupported, unexpected = [], [], set()
    ignored = sum(_is_macos_litter(p.name) for p in root.iterdir())
    for split in OFFICIAL_SPLITS:
        for dirpath, dirnames, filenames in walk_files(root, root / split):
            litter = [d for d in dirnames if _is_macos_litter(d)]
            ignored += len(litter) + sum(_is_macos_litter(f) for f in filenames)
            dirnames[:] = [d for d in dirnames if d not in litter]
            rel_dir = dirpath.relative_to(root)
            for fname in (f for f in filenames if not _is_macos_litter(f)):
                rel = (rel_dir / fname).as_posix()
                if len(rel_dir.parts) < 2 or rel_dir.parts[1] not in CLASSES:
                    unexpected.add("/".join(rel.split("/")[:2]))
                elif Path(fname).suffix.lower() not in ACCEPTED_EXTENSIONS:
                    unsupported.append(rel)
                else:
                    records.append((rel, split, rel_dir.parts[1], str(root / rel)))
    if unexpected:
        raise DatasetError(
            f"unexpected entries in {root}: {_shown(sorted(unexpected))}; the Kaggle layout has "
            f"only {' and '.join(f'{c}/' for c in CLASSES)} folders inside each of "
            f"{', '.join(OFFICIAL_SPLITS)}/. Move or remove them, then run the import again"
        )
    if unsupported:
        raise DatasetError(
            f"{len(unsupported)} file(s) in {root} are not images this importer reads: "
            f"{_shown(unsupported, 20)}; accepted extensions: {' '.join(ACCEPTED_EXTENSIONS)}. "
            "Remove or convert them, then run the import again"
        )
    rows = pd.DataFrame(records, columns=["image_id", "official_split", "class", "source_path"])
    present = set(zip(rows["official_split"], rows["class"], strict=True))
    missing = [f"{s}/{c}" for s in REQUIRED_SPLITS for c in CLASSES if (s, c) not in present]
    if missing:
        raise DatasetError(
            f"no images in {', '.join(missing)} under {root}; every class of train and test "
            "needs images (e.g. train/NORMAL/*.jpeg). The download looks incomplete: download "
            "and unzip the dataset again"
        )
    rows[LABEL] = rows["class"].map(CLASSES).astype("int64")
    notes = []
    if ignored:
        notes.append(f"ignored {ignored} macOS metadata entries (__MACOSX, .DS_Store, ._*)")
    if (root / "chest_xray").is_dir():
        notes.append("ignored the nested duplicate copy chest_xray/chest_xray/")
    return rows, notes


def _file_hash(path: str) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def drop_duplicates(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep one row per byte-identical file: a test copy if any, else the first by path."""
    by_size = defaultdict(list)
    for i, path in enumerate(rows["source_path"]):
        by_size[os.path.getsize(path)].append(i)
    by_hash = defaultdict(list)  # only files sharing a size can be identical: hash just those
    for members in by_size.values():
        if len(members) > 1:
            for i in members:
                by_hash[_file_hash(rows["source_path"].iat[i])].append(i)
    drop, examples, cross_split, conflicting = [], [], 0, 0
    for members in by_hash.values():
        if len(members) < 2:
            continue
        members.sort(
            key=lambda i: (rows["official_split"].iat[i] != "test", rows["image_id"].iat[i])
        )
        drop += members[1:]
        examples += [
            f"{rows['image_id'].iat[i]} = {rows['image_id'].iat[members[0]]}" for i in members[1:]
        ]
        cross_split += rows["official_split"].iloc[members].nunique() > 1
        conflicting += rows[LABEL].iloc[members].nunique() > 1
    if not drop:
        return rows, []
    notes = [
        f"dropped {len(drop)} byte-identical duplicate file(s), keeping the first copy by path "
        f"(a test copy where there is one): {_shown(sorted(examples))}"
    ]
    if cross_split:
        notes.append(
            f"{cross_split} duplicate group(s) spanned official splits: kept the test copy where "
            "there was one, so no picture is in both train and test"
        )
    if conflicting:
        notes.append(
            f"{conflicting} duplicate group(s) had copies in both NORMAL and PNEUMONIA; the kept "
            "copy's folder gives the label"
        )
    return rows.drop(index=rows.index[drop]).reset_index(drop=True), notes


def parse_name(stem: str) -> tuple[str | None, str | None]:
    """``(patient_id, pathogen)`` from a Kaggle file name without extension; None if unknown."""
    if match := _PERSON.fullmatch(stem):
        return match.group(1), match.group(2)
    if match := _NORMAL.fullmatch(stem):
        return match.group(1), None
    return None, None


def assign_patients(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add ``patient_id`` and ``pathogen``; test patient ids get the prefix ``test/``.

    Train and the official val share one numbering (val continues where train stops); the test
    folder starts again at 1, so its ids are scoped to the split and never match a train id.
    """
    rows = rows.copy()
    parsed = [parse_name(Path(p).stem) for p in rows["image_id"]]
    patient = pd.Series([p for p, _ in parsed], index=rows.index, dtype=object)
    pathogen = pd.Series([g for _, g in parsed], index=rows.index, dtype=object)
    rows["pathogen"] = pathogen.where(rows[LABEL] == 1, "none")
    is_test = rows["official_split"] == "test"
    scoped = [
        TEST_PREFIX + p if p is not None and test else p
        for p, test in zip(patient, is_test, strict=True)
    ]
    rows["patient_id"] = pd.Series(scoped, index=rows.index, dtype=object)
    notes = []
    unknown = rows["image_id"][rows["patient_id"].isna()].tolist()
    if unknown:
        notes.append(
            f"{len(unknown)} file name(s) match no Kaggle naming pattern (person<N>_bacteria_<M>"
            f", person<N>_virus_<M>, [NORMAL2-]IM-<P>-<K>); their patient_id is null and each "
            f"counts as its own patient: {_shown(unknown)}"
        )
    shared = sorted(set(patient[is_test].dropna()) & set(patient[~is_test].dropna()))
    if shared:
        notes.append(
            f"{len(shared)} patient number(s) occur in both train/val and test, e.g. "
            f"{_shown(shared)}: the numbering restarts in the test folder, so these are "
            f"different patients; test patient ids are stored as {TEST_PREFIX}<id> and no "
            "training image is dropped for them"
        )
    return rows, notes


def _shown(items: list[str], limit: int = _EXAMPLES) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
