"""Importer for a CSV of image paths and 0/1 labels: ``cxrkd data import csv FILE --image-root
DIR``.

Columns (names are stripped of spaces; every row is one image):

- ``path`` (required): the image file, relative to ``--image-root``; absolute paths and paths
  with ``..`` are refused (an import reads nothing outside the image root, and no symbolic
  link inside it either). ``./a.png`` and ``a.png`` are one path; a path listed twice is refused.
- label columns, each 0 or 1 (no blanks: CheXpert's -1 "uncertain" must be mapped first):
  ``--labels a,b`` names them, else every column other than ``path``, ``patient_id``, ``split``
  (and ``image_id``, ``source_path``, ``orig_width``, ``orig_height``, ``format``, which the store
  itself uses) is a label. Columns that are not labels are not imported.
- ``patient_id`` (optional): groups the drawn val/test splits by patient; blank = unknown.
- ``split`` (optional): train, val or test (case ignored); blank = drawn by the importer.
  See :mod:`trainables.data.generic_import` for how splits are drawn and kept.

One label column gives a binary task (the label is the positive class; a column named like a
normal class, e.g. ``No Finding``, is refused as the only label). Several give a multi-label
task whose global (normal/abnormal, the MCCT task's) label is, in this order: a label column
named ``abnormal``; else ``abnormal = 1 - <the "No Finding"/"normal" column>``, as the VinDr-CXR
importer derives it; else ``abnormal = any finding`` (as for ChestMNIST and the phantom). The
findings (the MLCT task) are the other label columns. The rule used is noted in the manifest.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from cxrkd.trainables.data.generic_import import (
    ABNORMAL,
    assign_splits,
    check_fractions,
    default_name,
    is_normal_name,
    require_both_classes,
)
from cxrkd.trainables.data.image_files import (
    ACCEPTED,
    check_dicoms,
    decode_any,
    drop_byte_duplicates,
    image_format,
    shown,
)
from cxrkd.trainables.data.import_plan import ImportPlan
from cxrkd.trainables.data.source_tree import refuse_symlinks
from cxrkd.trainables.data.store import BASE_COLUMNS, SPLITS, DatasetError

KIND = "csv"
IMPORTER_VERSION = 1  # bump when a change alters which rows, ids or splits an import keeps
PATH, PATIENT, SPLIT = "path", "patient_id", "split"
RESERVED = (PATH, PATIENT, SPLIT, *BASE_COLUMNS, "format")  # never labels


def plan_csv(
    src: str,
    *,
    image_root: str | None = None,
    name: str | None = None,
    labels: str | list[str] | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
) -> ImportPlan:
    """Plan the import of the CSV ``src`` of images under ``image_root`` (module docstring)."""
    check_fractions(val_fraction, test_fraction)
    csv_path, root = _paths(src, image_root)
    frame = read_table(csv_path)
    chosen = label_columns(frame, labels, csv_path)
    values = label_values(frame, chosen, csv_path, explicit=labels is not None)
    rows = pd.DataFrame(
        {
            "image_id": image_ids(frame, csv_path),
            "patient_id": _optional(frame, PATIENT),
            "split": split_values(frame, csv_path),
        }
    )
    rows["source_path"] = source_files(rows["image_id"], root, csv_path)
    rows["format"] = [image_format(p) for p in rows["source_path"]]
    bad = rows.loc[rows["format"].isna(), "image_id"].tolist()
    if bad:
        raise DatasetError(
            f"{len(bad)} file(s) listed in {csv_path.name} are not images this importer reads: "
            f"{shown(bad)}; it reads {ACCEPTED}. Convert them or drop their rows"
        )
    task, labels_, findings, global_label, label_notes = global_label_of(values)
    rows = pd.concat([rows, values[labels_]], axis=1)
    rows, dup_notes = drop_byte_duplicates(rows, labels=labels_)
    check_dicoms(rows)
    rows, split_notes = assign_splits(
        rows,
        stratum=global_label,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    require_both_classes(
        rows,
        global_label,
        fix="fix the split column, or pass another --seed or larger --val-fraction/--test-fraction",
    )
    ignored = [c for c in frame.columns if c not in (PATH, PATIENT, SPLIT, *chosen)]
    if ignored:
        label_notes.append(f"columns not imported (not labels): {shown(ignored, 10)}")
    return ImportPlan(
        name=name or default_name(csv_path, "CSV file"),
        kind=KIND,
        task=task,
        labels=labels_,
        finding_labels=findings,
        global_label=global_label,
        rows=rows.reset_index(drop=True),
        decode=decode_any,
        synthetic=False,
        source=f"{csv_path} (images under {root})",
        options={
            "image_root": str(root),
            "labels": chosen,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "importer_version": IMPORTER_VERSION,
        },
        notes=[*label_notes, *dup_notes, *split_notes],
    )


def _paths(src: str, image_root: str | None) -> tuple[Path, Path]:
    csv_path = Path(src).expanduser()
    if not csv_path.is_file():
        what = "is a folder" if csv_path.is_dir() else "does not exist"
        raise DatasetError(
            f"CSV file {str(src)!r} {what}; pass a CSV with a path column and 0/1 label "
            "columns (for a folder of class sub-folders use `cxrkd data import folder`)"
        )
    if image_root is None:
        raise DatasetError("pass --image-root DIR: the folder the CSV's path column is relative to")
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"--image-root {str(image_root)!r} is not a folder; pass the folder the CSV's "
            "paths are relative to"
        )
    return csv_path.resolve(), root.resolve()  # the root itself may be a link


def _line(index) -> int:
    return int(index) + 2  # the header is line 1


def read_table(path: Path) -> pd.DataFrame:
    """The CSV as strings (blank cells ''), column names stripped; one row at least."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} as a UTF-8 CSV ({exc}); fix the file") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    repeated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise DatasetError(f"{path.name} repeats column(s) {repeated}; name each column once")
    if PATH not in frame.columns:
        raise DatasetError(
            f"{path.name} has no {PATH!r} column (found {list(frame.columns)}); add one holding "
            "each image's path relative to --image-root"
        )
    if frame.empty:
        raise DatasetError(f"{path.name} has a header but no rows; nothing to import")
    return frame


def label_columns(frame: pd.DataFrame, labels, path: Path) -> list[str]:
    """The label columns: ``labels`` ("a,b" or a list) checked, else every other column."""
    if labels is None:
        chosen = [c for c in frame.columns if c not in RESERVED]
        if not chosen:
            raise DatasetError(
                f"{path.name} has no label column (only {list(frame.columns)}); add one 0/1 "
                "column per label"
            )
        return chosen
    chosen = [s.strip() for s in labels.split(",")] if isinstance(labels, str) else list(labels)
    if not chosen or "" in chosen or len(set(chosen)) < len(chosen):
        raise DatasetError(f"--labels {labels!r}: name each label column once, e.g. --labels a,b")
    reserved = [c for c in chosen if c in RESERVED]
    if reserved:
        raise DatasetError(
            f"--labels names {reserved}, which cannot be labels (the importer or the store "
            f"uses them: {list(RESERVED)}); rename the column(s)"
        )
    unknown = [c for c in chosen if c not in frame.columns]
    if unknown:
        candidates = [c for c in frame.columns if c not in RESERVED]
        raise DatasetError(
            f"--labels names column(s) {unknown} that {path.name} lacks; its columns that can "
            f"be labels: {candidates}"
        )
    return chosen


def label_values(frame: pd.DataFrame, chosen: list[str], path: Path, *, explicit: bool):
    """The label columns as int8 0/1; anything else (blank, -1, 2, text) is refused."""
    values = frame[chosen].apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce"))
    bad = {}
    for col in chosen:
        wrong = values.index[~values[col].isin((0, 1))]
        if len(wrong):
            cells = [f"{frame[col].iat[i]!r} (line {_line(i)})" for i in wrong[:3]]
            bad[col] = f"{col!r}: {len(wrong)} row(s), e.g. {', '.join(cells)}"
    if bad:
        how = (
            ""
            if explicit
            else "; every column other than path, patient_id and split is taken as a label "
            "unless --labels names the label columns (e.g. --labels a,b)"
        )
        raise DatasetError(
            f"labels must be 0 or 1, but in {path.name}: " + "; ".join(bad.values()) + ". Fill "
            "in blanks and map other values (e.g. CheXpert's -1, uncertain) to 0 or 1" + how
        )
    return values.astype(np.int8)


def image_ids(frame: pd.DataFrame, path: Path) -> list[str]:
    """The normalised relative paths (``./a//b.png`` -> ``a/b.png``), checked."""
    raw = frame[PATH].str.strip()
    problems = {"blank": [], "absolute": [], "'..'": []}
    ids = []
    for i, value in raw.items():
        posix = PurePosixPath(value)
        if not value:
            problems["blank"].append(f"line {_line(i)}")
        elif posix.is_absolute() or PureWindowsPath(value).drive:
            problems["absolute"].append(f"{value!r} (line {_line(i)})")
        elif ".." in posix.parts:
            problems["'..'"].append(f"{value!r} (line {_line(i)})")
        ids.append(posix.as_posix())
    found = [f"{len(v)} {k} path(s): {shown(v)}" for k, v in problems.items() if v]
    if found:
        raise DatasetError(
            f"{path.name}: " + "; ".join(found) + ". Each path must name a file inside "
            "--image-root, relative to it (e.g. images/a.png), with no '..'"
        )
    dup = pd.Series(ids)
    repeated = dup[dup.duplicated(keep=False)]
    if len(repeated):
        groups = repeated.groupby(repeated, sort=True).groups
        lines = {p: ", ".join(str(_line(i)) for i in g) for p, g in groups.items()}
        examples = [f"{p!r} (lines {at})" for p, at in lines.items()]
        raise DatasetError(
            f"{path.name} lists {len(groups)} path(s) more than once: {shown(examples)}; keep "
            "one row per image (merge its labels into that row)"
        )
    return ids


def _optional(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(None, index=frame.index, dtype=object)
    values = frame[column].str.strip().astype(object)
    return values.where(values != "", None)


def split_values(frame: pd.DataFrame, path: Path) -> pd.Series:
    values = _optional(frame, SPLIT).str.lower()
    bad = values.notna() & ~values.isin(SPLITS)
    if bad.any():
        cells = [f"{frame[SPLIT].iat[i]!r} (line {_line(i)})" for i in values.index[bad]]
        raise DatasetError(
            f"{path.name}: {int(bad.sum())} split value(s) are not train, val or test: "
            f"{shown(cells)}; use those three names, or leave the cell blank for the importer "
            "to draw the split"
        )
    return values.astype(object).where(values.notna(), None)


def source_files(ids: pd.Series, root: Path, path: Path) -> list[str]:
    """Absolute paths of the listed files; links refused, missing files named."""
    prefixes = set()  # every folder on the way to each file, and the file: no link among them
    for image_id in ids:
        parts = PurePosixPath(image_id).parts
        prefixes.update(root.joinpath(*parts[: k + 1]) for k in range(len(parts)))
    refuse_symlinks(root, sorted(prefixes))
    files = [root / i for i in ids]
    missing = [i for i, f in zip(ids, files, strict=True) if not f.is_file()]
    if missing:
        hint = (
            f"none of the {len(ids)} listed files exist: is --image-root right? The first path "
            f"would be {files[0]}"
            if len(missing) == len(ids)
            else "restore them, or drop their rows from the CSV"
        )
        raise DatasetError(
            f"{len(missing)} of {len(ids)} image file(s) listed in {path.name} are missing under "
            f"{root}: {shown(missing)}; {hint}"
        )
    return [str(f) for f in files]


def global_label_of(values: pd.DataFrame) -> tuple[str, list[str], list[str], str, list[str]]:
    """``(task, labels, findings, global label, notes)``; adds a derived ``abnormal`` column
    to ``values`` where the rule of the module docstring derives one."""
    columns = list(values.columns)
    if len(columns) == 1:
        (label,) = columns
        if is_normal_name(label):
            raise DatasetError(
                f"the only label column, {label!r}, marks normal images; a binary label marks "
                "the finding (1 = abnormal): add a column holding 1 - it and pass that one"
            )
        return "binary", columns, [], label, [f"binary task: label {label!r}"]
    abnormal = [c for c in columns if c.lower() == ABNORMAL]
    normal = [c for c in columns if is_normal_name(c)]
    findings = [c for c in columns if c not in (*abnormal, *normal)]
    if not findings or len(normal) > 1:
        raise DatasetError(
            f"label columns {columns}: a multi-label dataset needs finding columns and at most "
            "one normal ('No Finding') column; pass --labels with the findings"
        )
    if abnormal:
        global_label, rule = abnormal[0], f"the CSV's {abnormal[0]!r} column"
    elif normal:
        values[ABNORMAL] = (1 - values[normal[0]]).astype(np.int8)
        global_label, rule = ABNORMAL, f"derived as 1 - {normal[0]!r}"
    else:
        values[ABNORMAL] = values[findings].max(axis=1).astype(np.int8)
        global_label, rule = ABNORMAL, "derived as 1 when any finding is 1"
    labels = [*columns, *([ABNORMAL] if global_label == ABNORMAL and not abnormal else [])]
    note = (
        f"multi-label task: findings {findings}; global (normal/abnormal) label "
        f"{global_label!r}, {rule}"
    )
    return "multilabel", labels, findings, global_label, [note]
