"""The ``csv`` importer (paths + 0/1 labels, optional patient_id and split), end to end on real
PNG, JPEG and DICOM files, and through the store's users."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_dicom import chest_values, lung_mask, write_dicom
from PIL import Image
from test_folder_import import write_picture

from cxrkd.search.cli import main
from cxrkd.trainables.data.csv_import import plan_csv
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.splits import assert_patient_disjoint
from cxrkd.trainables.data.store import DatasetError, DatasetStore, datasets_dir

SIZE = 16
FINDINGS = ["Effusion", "Mass"]
N_PATIENTS, PER_PATIENT = 20, 3
TEST_PATIENTS = ("p00", "p01", "p02", "p03")  # explicit test rows (one of p00's is blank)
JOINS_TEST = "images/p00_2.jpeg"  # no split given: joins its patient's test split
DUP, DUP_OF = "images/dup.jpeg", "images/p01_0.jpeg"  # a train-side copy of a test file
CORRUPT = "images/p19_2.jpeg"
DICOM = "dicom/scan.dcm"
WIDE = "images/wide16.png"


def findings_of(k: int) -> dict[str, int]:
    """Effusion on every third image, Mass on every fourth: both, one, or none."""
    return {"Effusion": int(k % 3 == 0), "Mass": int(k % 4 == 1)}


def write_source(base: Path) -> tuple[Path, Path]:
    """``base/root/`` of images and ``base/labels.csv`` (module constants: its quirks)."""
    root = base / "root"
    rows = []
    for p in range(N_PATIENTS):
        for j in range(PER_PATIENT):
            k = p * PER_PATIENT + j
            path = f"images/p{p:02d}_{j}.jpeg"
            labels = findings_of(k)
            write_picture(root / path, seed=k + 1, pneumonia=any(labels.values()))
            split = "test" if f"p{p:02d}" in TEST_PATIENTS and path != JOINS_TEST else ""
            rows.append({"path": path, "patient_id": f"p{p:02d}", "split": split, **labels})
    rows[5]["path"] = "./" + rows[5]["path"]  # normalised to images/p01_2.jpeg
    rows[7]["split"] = "TEST"  # case is ignored (p02's rows are 6-8)
    rows[12]["split"] = "train"  # an explicit train row; p04's other rows are drawn
    shutil.copyfile(root / DUP_OF, root / DUP)
    rows.append({"path": DUP, "patient_id": "p10", "split": "", **findings_of(0)})
    corrupt = root / CORRUPT
    corrupt.write_bytes(corrupt.read_bytes()[:120])
    write_dicom(root / DICOM, chest_values(48, 40), window=(2048.0, 4096.0))
    rows.append({"path": DICOM, "patient_id": "p20", "split": "", "Effusion": 1, "Mass": 0})
    wide = np.tile(np.linspace(0, 60000, 50), (30, 1)).astype(np.uint16)
    Image.fromarray(wide).save(root / WIDE)
    rows.append({"path": WIDE, "patient_id": "p21", "split": "", "Effusion": 0, "Mass": 0})
    frame = pd.DataFrame(rows)
    frame["age"] = 40 + frame.index % 30  # not a label: left out with --labels
    frame.to_csv(base / "labels.csv", index=False)
    return base / "labels.csv", root


def _import(csv, root, home=None, **options):
    return import_dataset(
        "csv", str(csv), image_root=str(root), home=home, size=SIZE, workers=1, progress=False,
        **options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_source(tmp_path_factory.mktemp("csv"))


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    manifest = _import(*source, home, labels="Effusion,Mass", seed=2)
    return manifest, DatasetStore.open("labels", home)


def _row(store, image_id):
    rows = store.meta.index[store.meta["image_id"] == image_id]
    assert len(rows) == 1, image_id
    return rows[0]


def test_manifest_of_a_multilabel_csv(imported):
    manifest, store = imported
    assert (manifest.name, manifest.kind, manifest.task) == ("labels", "csv", "multilabel")
    assert manifest.labels == [*FINDINGS, "abnormal"] and manifest.global_label == "abnormal"
    assert manifest.finding_labels == FINDINGS and not manifest.synthetic
    # 60 listed pictures + the copy + the DICOM + the 16-bit PNG; the copy dropped, the
    # corrupt file skipped.
    assert manifest.n_images == 61 == len(store.meta) == store.images.shape[0]
    assert manifest.options["labels"] == FINDINGS
    meta = store.meta
    assert (meta["abnormal"] == meta[FINDINGS].max(axis=1)).all()  # any finding
    assert "age" not in meta.columns
    notes = "\n".join(manifest.notes)
    assert "global (normal/abnormal) label 'abnormal', derived as 1 when any finding is 1" in notes
    assert "columns not imported (not labels): age" in notes
    assert "images/p01_2.jpeg" in set(meta["image_id"])  # "./" dropped


def test_explicit_test_kept_and_drawn_splits_grouped_by_patient(imported):
    manifest, store = imported
    meta = store.meta
    test = meta.loc[meta["split"] == "test"]
    assert set(test["patient_id"]) == set(TEST_PATIENTS)
    assert len(test) == len(TEST_PATIENTS) * PER_PATIENT and JOINS_TEST in set(test["image_id"])
    assert_patient_disjoint(meta)
    assert meta.loc[_row(store, "images/p04_0.jpeg"), "split"] in ("train", "val")
    assert set(meta["split"]) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        assert set(meta.loc[meta["split"] == split, "abnormal"]) == {0, 1}, split
    notes = "\n".join(manifest.notes)
    assert "1 image(s) without a split joined the val/test split" in notes
    assert "kept the source's test split (12 images)" in notes
    assert "drew val from the" in notes and "grouped by patient" in notes and "seed=2" in notes


def test_reimport_with_exist_ok_reuses_the_store(source, imported):
    manifest, store = imported
    again = _import(*source, store.path.parent.parent, labels=FINDINGS, seed=2, exist_ok=True)
    assert again.fingerprint == manifest.fingerprint
    with pytest.raises(DatasetError, match="exists but was imported from csv with"):
        _import(*source, store.path.parent.parent, labels=FINDINGS, seed=3, exist_ok=True)


def test_split_depends_on_ids_and_seed_not_on_row_order(source, tmp_path):
    csv, root = source
    a = plan_csv(str(csv), image_root=str(root), seed=2, labels="Effusion,Mass").rows
    shuffled = pd.read_csv(csv, dtype=str, keep_default_na=False).sample(frac=1, random_state=0)
    shuffled.to_csv(tmp_path / "labels.csv", index=False)
    b = plan_csv(str(tmp_path / "labels.csv"), image_root=str(root), seed=2, labels=FINDINGS).rows
    by_id = b.set_index("image_id")["split"]
    assert (a.set_index("image_id")["split"] == by_id[a["image_id"]].to_numpy()).all()
    other = plan_csv(str(csv), image_root=str(root), seed=3, labels=FINDINGS).rows
    assert not a["split"].equals(other["split"])


def test_duplicate_unreadable_and_modes(imported):
    manifest, store = imported
    ids = set(store.meta["image_id"])
    assert DUP not in ids and DUP_OF in ids and CORRUPT not in ids
    notes = "\n".join(manifest.notes)
    assert "dropped 1 byte-identical duplicate file(s)" in notes and f"{DUP} = {DUP_OF}" in notes
    assert f"skipped 1 unreadable file(s): {CORRUPT}" in notes
    dicom = store.images[_row(store, DICOM)].astype(float)
    lungs = lung_mask(SIZE, SIZE)
    assert dicom[lungs].mean() + 40 < dicom[~lungs].mean()
    wide = store.images[_row(store, WIDE)].astype(float).mean(axis=0)
    assert (np.diff(wide) > 0).all() and wide[0] < 20 and wide[-1] > 235


def test_default_labels_are_every_other_column(source):
    csv, root = source
    with pytest.raises(DatasetError) as info:
        plan_csv(str(csv), image_root=str(root))  # "age" is taken as a label
    message = str(info.value)
    assert "labels must be 0 or 1" in message and "'age': 63 row(s), e.g. '40' (line 2)" in message
    assert "unless --labels names the label columns" in message


def _write(tmp_path, rows, *, files=True) -> tuple[Path, Path]:
    root = tmp_path / "root"
    frame = pd.DataFrame(rows)
    if files and "path" in frame.columns:
        for k, path in enumerate(frame["path"]):
            clean = Path(str(path).strip().removeprefix("./"))
            if not clean.is_absolute() and ".." not in clean.parts and str(clean) != ".":
                write_picture(root / clean, seed=100 + k, pneumonia=False)
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(tmp_path / "set.csv", index=False)
    return tmp_path / "set.csv", root


def _rows(n: int = 24, **columns) -> list[dict]:
    return [{"path": f"img/{k:03d}.png", **{c: f(k) for c, f in columns.items()}} for k in range(n)]


def test_binary_csv_without_patients_draws_per_image(tmp_path):
    csv, root = _write(tmp_path, _rows(40, pneumonia=lambda k: k % 2))
    manifest = _import(csv, root)
    assert (manifest.task, manifest.labels, manifest.global_label) == (
        "binary", ["pneumonia"], "pneumonia",
    )  # fmt: skip
    assert manifest.splits == {"train": 30, "val": 4, "test": 6}
    notes = "\n".join(manifest.notes)
    assert "drew test and val" in notes and "images of one patient may land on both sides" in notes


@pytest.mark.parametrize(
    ("columns", "global_label", "labels", "rule"),
    [
        (
            ["Mass", "No Finding"],
            "abnormal",
            ["Mass", "No Finding", "abnormal"],
            "1 - 'No Finding'",
        ),
        (["Mass", "Effusion", "Abnormal"], "Abnormal", ["Mass", "Effusion", "Abnormal"], "column"),
    ],
)
def test_global_label_rules(tmp_path, columns, global_label, labels, rule):
    values = {
        "Mass": lambda k: int(k % 3 == 0),
        "Effusion": lambda k: int(k % 4 == 0),
        "No Finding": lambda k: int(k % 3 != 0),
        "Abnormal": lambda k: int(k % 3 == 0 or k % 4 == 0),
    }
    csv, root = _write(tmp_path, _rows(40, **{c: values[c] for c in columns}))
    plan = plan_csv(str(csv), image_root=str(root))
    assert (plan.task, plan.global_label, plan.labels) == ("multilabel", global_label, labels)
    assert "No Finding" not in plan.finding_labels and "Abnormal" not in plan.finding_labels
    assert rule in plan.notes[0]
    if global_label == "abnormal":
        assert (plan.rows["abnormal"] == 1 - plan.rows["No Finding"]).all()


# --- bad input, through the command line: exit 2, the problem and the fix, nothing written --


def _fails(capsys, csv, root, *patterns, extra=()):
    argv = ["data", "import", "csv", str(csv), "--image-root", str(root), "--size", str(SIZE)]
    assert main([*argv, "--workers", "1", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    for pattern in patterns:
        assert pattern in err, err
    home = Path(os.environ["CXRKD_HOME"])
    assert not datasets_dir(home).exists() or not any(datasets_dir(home).iterdir())


def test_missing_files_named_with_their_count(tmp_path, capsys):
    csv, root = _write(tmp_path, _rows(12, sick=lambda k: k % 2))
    for k in (1, 3, 4, 7, 8, 9, 11):
        (root / f"img/{k:03d}.png").unlink()
    named = "img/001.png, img/003.png, img/004.png, img/007.png, img/008.png ... and 2 more"
    _fails(capsys, csv, root, "7 of 12 image file(s) listed in set.csv are missing under", named)
    _fails(capsys, csv, tmp_path, "12 of 12", "is --image-root right? The first path would be")


def test_only_normal_label_refused(tmp_path, capsys):
    csv, root = _write(tmp_path, _rows(12, normal=lambda k: k % 2))
    _fails(capsys, csv, root, "the only label column, 'normal', marks normal images")


@pytest.mark.parametrize(
    ("rows", "extra", "patterns"),
    [
        (_rows(6, sick=lambda k: k % 2), ("--labels", "sick,mass"),
         ["--labels names column(s) ['mass'] that set.csv lacks", "can be labels: ['sick']"]),
        (_rows(6, sick=lambda k: ["1", "", "0", "-1", "1", "0"][k]), (),
         ["labels must be 0 or 1", "'sick': 2 row(s), e.g. '' (line 3), '-1' (line 5)",
          "CheXpert's -1"]),
        ([{"file": "a.png", "sick": 1}], (), ["no 'path' column (found ['file', 'sick'])"]),
        (_rows(6, sick=lambda k: k % 2, split=lambda k: ["train", "validation"][k % 2]), (),
         ["3 split value(s) are not train, val or test: 'validation' (line 3)"]),
        ([*_rows(6, sick=lambda k: k % 2), {"path": "./img/002.png", "sick": 1}], (),
         ["lists 1 path(s) more than once: 'img/002.png' (lines 4, 8)", "one row per image"]),
        (_rows(6, sick=lambda k: k % 2, patient_id=lambda k: f"p{k // 2}",
               split=lambda k: ["train", "test", "val", "val", "test", "val"][k]), (),
         ["2 patient(s) have images in two splits: p0 (test/train), p2 (test/val)"]),
        ([{"path": "/etc/passwd", "sick": 1}, {"path": "../x.png", "sick": 0}], (),
         ["1 absolute path(s): '/etc/passwd' (line 2)", "1 '..' path(s): '../x.png' (line 3)"]),
        (_rows(6, sick=lambda k: k % 2), ("--labels", "sick,split"),
         ["--labels names ['split'], which cannot be labels"]),
        (_rows(6, image_id=lambda k: str(k)), (), ["has no label column"]),
        (_rows(12, sick=lambda k: k % 2, split=lambda k: "test" if k in (0, 2, 4) else ""), (),
         ["the test split has only sick=0 images", "fix the split column"]),
        (_rows(12, sick=lambda k: k % 2, split=lambda k: "val" if k < 4 else ""),
         ("--val-fraction", "0.2"),
         ["the source has its own val split (4 images)", "drop --val-fraction"]),
    ],
)  # fmt: skip
def test_bad_csv_refused(tmp_path, capsys, rows, extra, patterns):
    csv, root = _write(tmp_path, rows)
    _fails(capsys, csv, root, *patterns, extra=extra)


def test_symbolic_link_and_unsupported_file_refused(tmp_path, capsys):
    csv, root = _write(tmp_path, _rows(6, sick=lambda k: k % 2))
    target = write_picture(tmp_path / "elsewhere.png", seed=1, pneumonia=False, fmt="PNG")
    (root / "img/002.png").unlink()
    (root / "img/002.png").symlink_to(target)
    _fails(capsys, csv, root, "1 symbolic link(s)", "img/002.png", "OUTSIDE SRC")
    (root / "img/002.png").unlink()
    shutil.move(root / "img", root / "linked")
    (root / "img").symlink_to(root / "linked")
    _fails(capsys, csv, root, "img -> ", "inside SRC")
    csv, root = _write(tmp_path / "b", [{"path": "a.gif", "sick": 1}], files=False)
    Image.new("L", (8, 8)).save(root / "a.gif")
    _fails(capsys, csv, root, "1 file(s) listed in set.csv are not images", "a.gif")


# --- the store's users -------------------------------------------------------------------


def test_show_preview_pipeline_and_the_studies_dataset_check(source, tmp_path, capsys):
    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.study_dataset import open_dataset
    from cxrkd.search.study_options import study_with_options
    from cxrkd.trainables.context import DataBundle
    from cxrkd.trainables.data.pipeline import BatchLoader
    from cxrkd.trainables.errors import CxrkdError

    csv, root = source
    argv = ["data", "import", "csv", str(csv), "--image-root", str(root), "--name", "cx"]
    assert main([*argv, "--labels", "Effusion,Mass", "--size", str(SIZE), "--workers", "1",
                 "--no-progress"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert f"note: skipped 1 unreadable file(s): {CORRUPT}" in out and str(root / CORRUPT) in err
    assert main(["data", "show", "cx"]) == 0
    out = capsys.readouterr().out
    assert "findings    Effusion, Mass; global label abnormal" in out
    assert main(["data", "preview", "cx", "--out", str(tmp_path / "p.png"), "--split", "test"]) == 0
    assert Image.open(tmp_path / "p.png").size[0] > 96
    lowres = study_with_options(RunOptions(study="lowres-kd", profile="paper"))
    store = open_dataset(lowres, "cx")  # a multi-label import passes the check
    bundle = DataBundle.from_store(store)
    assert bundle.info.label_columns() == ((0, 1), 2)
    train = bundle.split("train")
    x, y = next(iter(BatchLoader(train.images, train.labels, batch_size=4, shuffle=False,
                                 device="cpu")))  # fmt: skip
    assert x.shape == (4, 1, SIZE, SIZE) and y.shape == (4, 3)
    binary = study_with_options(RunOptions(study="pneumonia-kd", profile="paper"))
    with pytest.raises(CxrkdError, match="needs a binary dataset.*'cx' is multilabel"):
        open_dataset(binary, "cx")
