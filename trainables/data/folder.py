"""Importer for a folder of class sub-folders: ``cxrkd data import folder SRC``.

Layouts read (PNG, JPEG or DICOM files, in sub-folders of a class folder too)::

    SRC/<class>/...                       no splits given: test and val are drawn
    SRC/{train,val,test}/<class>/...      given splits (val/ and test/ optional; split folder
                                          names are matched without regard to case)

Two classes make a binary task. The negative class is the one named normal, negative, neg, 0,
healthy or "no finding" (case, '-', '_' and spaces ignored); the other class is the positive
one and names the label (lower-cased: ``PNEUMONIA/`` -> ``pneumonia``). ``--positive CLASS``
says it where no class (or both) has such a name. One class is refused.

Three or more classes make a multi-class task (softmax over the classes): one 0/1 label column
per class, named by the lower-cased folder name, in the sorted order of the folder names (the
class index of an image is its column's); ``--positive`` does not apply and is refused. Drawn
splits are stratified by class, and every split must hold images of every class.

Every image file is read where it is (nothing outside SRC: symbolic links are refused, see
:mod:`trainables.data.source_tree`); hidden files, ``__MACOSX/`` and Windows thumbnails are
ignored, files directly in SRC (or in a split folder) that are not images are ignored with a
note (a README, a label sheet), and any other file the importer cannot read is refused before
anything is written. A folder gives no patient ids: splits are drawn per image, stratified by
the label (:mod:`trainables.data.generic_import`); byte-identical copies are imported once
(:mod:`trainables.data.image_files`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrkd.trainables.data.generic_import import (
    assign_splits,
    check_fractions,
    default_name,
    is_normal_name,
    require_both_classes,
    require_every_class,
)
from cxrkd.trainables.data.image_files import (
    ACCEPTED,
    check_dicoms,
    decode_any,
    drop_byte_duplicates,
    image_format,
    is_litter,
    shown,
)
from cxrkd.trainables.data.import_plan import ImportPlan
from cxrkd.trainables.data.source_tree import refuse_symlinks, walk_files
from cxrkd.trainables.data.store import BASE_COLUMNS, SPLITS, DatasetError

KIND = "folder"
IMPORTER_VERSION = 1  # bump when a change alters which rows, ids or splits an import keeps
EXTRA_COLUMNS = ("class", "format")  # stored besides the base columns and the label


def plan_folder(
    src: str,
    *,
    name: str | None = None,
    positive: str | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
) -> ImportPlan:
    """Plan the import of a class-folder tree at ``src`` (see the module docstring)."""
    check_fractions(val_fraction, test_fraction)
    root = _root(src)
    rows, notes = scan_classes(root)
    classes = sorted(set(rows["class"]))
    if len(classes) == 2:
        negative, positive = choose_positive(classes, positive)
        labels = [_label_of(positive)]
        rows[labels[0]] = (rows["class"] == positive).astype("int8")
        stratum = labels[0]
        class_note = (
            f"classes: {positive!r} is the positive class (label {labels[0]!r}), {negative!r} "
            "the negative one"
        )
    else:
        labels = _multiclass_labels(rows, classes, positive)
        stratum = "class"
        class_note = (
            f"classes: a multi-class task of {len(classes)} classes, labels {labels} (one "
            "column each, in this order)"
        )
    rows, dup_notes = drop_byte_duplicates(rows, labels=labels)
    check_dicoms(rows)
    rows["patient_id"] = None
    rows, split_notes = assign_splits(
        rows, stratum=stratum, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    more = "or pass another --seed or larger --val-fraction/--test-fraction"
    if len(classes) == 2:
        require_both_classes(
            rows,
            labels[0],
            fix=f"add {positive}/ and {negative}/ images to every split folder, {more}",
        )
    else:
        require_every_class(
            rows, classes, fix=f"add more images of those classes (to every split folder), {more}"
        )
    notes = [class_note, *notes, *dup_notes, *split_notes]
    columns = ["image_id", "patient_id", "split", "source_path", *labels, *EXTRA_COLUMNS]
    return ImportPlan(
        name=name or default_name(root, "folder"),
        kind=KIND,
        task="binary" if len(classes) == 2 else "multiclass",
        labels=labels,
        finding_labels=[],
        global_label=labels[0],
        rows=rows[columns].reset_index(drop=True),
        decode=decode_any,
        synthetic=False,
        source=str(root),
        options={
            "positive": positive,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "importer_version": IMPORTER_VERSION,
        },
        notes=notes,
    )


def _label_of(folder: str) -> str:
    label = folder.lower()
    if label in (*BASE_COLUMNS, *EXTRA_COLUMNS):
        raise DatasetError(
            f"class folder {folder!r} would name the label {label!r}, a metadata column of "
            "the store; rename the folder (e.g. to the finding it shows)"
        )
    return label


def _multiclass_labels(rows: pd.DataFrame, classes: list[str], positive: str | None) -> list:
    """The label columns of a multi-class import (added to ``rows``): one per class."""
    if positive is not None:
        raise DatasetError(
            f"--positive {positive!r} picks the positive class of a binary task, but the "
            f"{len(classes)} classes {classes} make a multi-class task (one label per class); "
            "drop --positive"
        )
    labels = [_label_of(c) for c in classes]
    if len(set(labels)) < len(labels):
        raise DatasetError(
            f"class folders {classes} differ only in case, so their labels (the lower-cased "
            "names) clash; rename or merge them"
        )
    for cls, label in zip(classes, labels, strict=True):
        rows[label] = (rows["class"] == cls).astype("int8")
    return labels


def _root(src: str) -> Path:
    path = Path(src).expanduser()
    layout = "expected SRC/<class>/*.png|jpg|dcm, or SRC/{train,val,test}/<class>/..."
    if not path.exists():
        raise DatasetError(f"SRC {str(src)!r} does not exist; {layout}. Check the path")
    if not path.is_dir():
        raise DatasetError(
            f"SRC {str(src)!r} is a file, not a folder; {layout} (unzip an archive first)"
        )
    return path.resolve()  # SRC itself may be a link; links inside it are refused


def _subfolders(folder: Path, root: Path) -> tuple[list[Path], list[str], int]:
    """``(sub-folders, names of loose files, litter count)`` of one level, links refused."""
    entries = sorted(folder.iterdir())
    refuse_symlinks(root, entries)
    litter = [e for e in entries if is_litter(e.name)]
    kept = [e for e in entries if not is_litter(e.name)]
    loose = [e.relative_to(root).as_posix() for e in kept if not e.is_dir()]
    return [e for e in kept if e.is_dir()], loose, len(litter)


def scan_classes(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per image file (``image_id`` = its path under ``root``), with ``class`` and
    ``split`` (None without split folders); raises on a layout it cannot read."""
    top, loose, ignored = _subfolders(root, root)
    split_dirs = {d.name.lower(): d for d in top if d.name.lower() in SPLITS}
    if split_dirs and len(split_dirs) < len(top):
        others = sorted(d.name for d in top if d.name.lower() not in SPLITS)
        raise DatasetError(
            f"{root} mixes split folders {sorted(d.name for d in split_dirs.values())} with "
            f"other folders {others}; put every class folder under train/, val/ or test/ (split "
            "folders are named exactly train, val and test), or use no split folders at all"
        )
    if split_dirs and "train" not in split_dirs:
        raise DatasetError(
            f"{root} has split folders {sorted(split_dirs)} but no train/; add train/<class>/ "
            "(or drop the split folders and let the importer draw val and test)"
        )
    parents = {s: split_dirs[s] for s in SPLITS if s in split_dirs} or {None: root}
    records, unsupported = [], []
    classes_per_split = {}
    for split, parent in parents.items():
        class_dirs, more_loose, more_litter = _subfolders(parent, root) if split else (top, [], 0)
        loose += more_loose
        ignored += more_litter
        classes_per_split[split] = [d.name for d in class_dirs]
        for class_dir in class_dirs:
            found, bad, litter = _class_files(root, class_dir)
            ignored += litter
            unsupported += bad
            if not found:
                raise DatasetError(
                    f"class folder {class_dir.relative_to(root).as_posix()}/ holds no image "
                    f"files ({ACCEPTED}); add its images or remove the folder"
                )
            records += [(rel, class_dir.name, split, path, fmt) for rel, path, fmt in found]
    _check_classes(root, classes_per_split, loose)
    if unsupported:
        raise DatasetError(
            f"{len(unsupported)} file(s) in the class folders of {root} are not images this "
            f"importer reads: {shown(sorted(unsupported), 20)}; it reads {ACCEPTED}. Remove or "
            "convert them, then run the import again"
        )
    rows = pd.DataFrame(
        records, columns=["image_id", "class", "split", "source_path", "format"]
    ).astype({"split": object})
    notes = []
    if ignored:
        notes.append(f"ignored {ignored} hidden or system entries (.DS_Store, ._*, __MACOSX)")
    if loose:
        notes.append(f"ignored {len(loose)} file(s) outside the class folders: {shown(loose)}")
    return rows, notes


def _class_files(root: Path, class_dir: Path) -> tuple[list, list, int]:
    """``([(image_id, path, format)], unsupported names, litter count)`` under one class."""
    found, unsupported, litter = [], [], 0
    for dirpath, dirnames, filenames in walk_files(root, class_dir):
        litter += sum(is_litter(n) for n in (*dirnames, *filenames))
        dirnames[:] = [d for d in dirnames if not is_litter(d)]
        for fname in (f for f in filenames if not is_litter(f)):
            path = dirpath / fname
            rel = path.relative_to(root).as_posix()
            fmt = image_format(path)
            if fmt is None:
                unsupported.append(rel)
            else:
                found.append((rel, str(path), fmt))
    return found, unsupported, litter


def _check_classes(root: Path, classes_per_split: dict, loose: list[str]) -> None:
    names = sorted({c for cs in classes_per_split.values() for c in cs})
    if not names:
        images = [f for f in loose if image_format(root / f)]
        found = f"{len(images)} image file(s) directly in it" if images else "no class folders"
        raise DatasetError(
            f"{root} has no class folders ({found}); put the images in one sub-folder per "
            "class, e.g. SRC/NORMAL/*.png and SRC/PNEUMONIA/*.png"
        )
    if len(names) == 1:
        raise DatasetError(
            f"{root} has one class folder, {names[0]!r}; a task needs two or more, e.g. "
            f"SRC/NORMAL/ beside SRC/{names[0]}/"
        )
    for split, classes in classes_per_split.items():
        if split and sorted(classes) != names:
            raise DatasetError(
                f"{split}/ has class folder(s) {sorted(classes)}, but the dataset's classes are "
                f"{names}; every split folder needs a folder of each class"
            )
    images = [f for f in loose if image_format(root / f)]
    if images:
        raise DatasetError(
            f"{len(images)} image file(s) lie outside the class folders, so their class is "
            f"unknown: {shown(images)}; move them into a class folder (or out of SRC)"
        )


def choose_positive(classes: list[str], positive: str | None) -> tuple[str, str]:
    """``(negative, positive)`` of two class names, by the rule of the module docstring."""
    if positive is not None:
        matches = [c for c in classes if c == positive] or [
            c for c in classes if c.lower() == positive.lower()
        ]
        if len(matches) != 1:
            raise DatasetError(f"--positive {positive!r} is not one of the classes {classes}")
        if is_normal_name(matches[0]):
            raise DatasetError(
                f"--positive {positive!r} names a normal class; the positive class is the "
                "finding (the label is 1 for it), so pass the other class"
            )
        return next(c for c in classes if c != matches[0]), matches[0]
    normal = [c for c in classes if is_normal_name(c)]
    if len(normal) != 1:
        which = "both classes" if normal else "no class"
        raise DatasetError(
            f"cannot tell the positive class of {classes}: {which} is named normal, negative, "
            "neg, 0, healthy or 'no finding'; pass --positive CLASS (the finding: its label "
            "is 1, the other class's 0)"
        )
    return normal[0], next(c for c in classes if c != normal[0])
