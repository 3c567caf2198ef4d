"""The ``folder`` importer (class sub-folders, optionally under train/val/test), end to end on
small trees of real PNG, JPEG and DICOM files, and through the store's users (data show and
preview, the trial pipeline, the studies' dataset check)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_dicom import chest_values, lung_mask, write_dicom
from fixtures_kaggle import image_bytes
from PIL import Image

from cxrkd.search.cli import main
from cxrkd.trainables.data.folder import plan_folder
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.store import DatasetError, DatasetStore, datasets_dir

SIZE = 16
# Flat pictures in the modes a mixed folder holds: each must be stored as its gray level.
FLAT_LEVEL = 150
FLAT_MODES = ("rgb.png", "rgba.png", "palette.png", "gray.png")
WIDE = "train/NORMAL/wide16.png"  # a 16-bit horizontal gradient
DICOM = "train/NORMAL/scan.dcm"  # JPEG 2000, MONOCHROME2
DICOM_NO_SUFFIX = "train/NORMAL/SCAN0001"  # uncompressed, MONOCHROME1, no extension
CORRUPT = "train/NORMAL/corrupt.jpeg"
DUP_OF_TEST, DUP_OF_TEST_OF = "train/NORMAL/dup.jpeg", "test/NORMAL/t0.jpeg"
DUP_IN_TRAIN, DUP_IN_TRAIN_OF = "train/PNEUMONIA/p000_copy.jpeg", "train/PNEUMONIA/p000.jpeg"
NESTED = "train/PNEUMONIA/more/p100.png"


def write_picture(path: Path, *, seed: int, pneumonia: bool, fmt: str = "JPEG") -> Path:
    """One synthetic radiograph of a size drawn from ``seed`` (grey or RGB)."""
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(36, 72, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image_bytes(
        width=width, height=height, rgb=bool(rng.random() < 0.3), seed=seed, fmt=fmt,
        pneumonia=pneumonia,
    )  # fmt: skip
    path.write_bytes(data)
    return path


def write_classes(root: Path, counts: dict[str, int], *, first_seed: int = 0) -> list[str]:
    """``counts[class]`` pictures in ``root/<class>/``; a class named like PNEUMONIA gets the
    bright opacities. Returns the files' paths relative to ``root``."""
    written, seed = [], first_seed
    for cls, n in counts.items():
        for k in range(n):
            seed += 1
            name = f"{cls[0].lower()}{k:03d}.jpeg"
            write_picture(root / cls / name, seed=seed, pneumonia=cls.lower() != "normal")
            written.append(f"{cls}/{name}")
    return written


def write_mode_zoo(folder: Path) -> None:
    """Flat RGB / RGBA / palette / 8-bit PNGs, a 16-bit gradient and two DICOMs."""
    folder.mkdir(parents=True, exist_ok=True)
    v = FLAT_LEVEL
    Image.new("RGB", (50, 40), (v, v, v)).save(folder / "rgb.png")
    Image.new("RGBA", (40, 60), (v, v, v, 128)).save(folder / "rgba.png")
    palette = Image.new("P", (44, 52), 3)
    palette.putpalette([0, 0, 0] * 3 + [v, v, v] + [255, 0, 0] * 252)
    palette.save(folder / "palette.png")
    Image.new("L", (64, 48), v).save(folder / "gray.png")
    wide = np.tile(np.linspace(1000, 5000, 64), (40, 1)).astype(np.uint16)
    Image.fromarray(wide).save(folder / "wide16.png")
    write_dicom(folder / "scan.dcm", chest_values(48, 40), window=(2048.0, 4096.0))
    write_dicom(
        folder / "SCAN0001",
        chest_values(48, 40, lungs_high=True),
        photometric="MONOCHROME1",
        window=(2048.0, 4096.0),
        syntax="1.2.840.10008.1.2.1",  # explicit VR little endian
    )


def write_split_tree(root: Path, *, train: int = 20, test: int = 4) -> Path:
    """``root/{train,test}/{NORMAL,PNEUMONIA}`` with every quirk of the module constants, plus
    macOS litter, a README at the top and a label sheet in test/ (both ignored)."""
    write_classes(root / "train", {"NORMAL": train, "PNEUMONIA": train})
    for cls in ("NORMAL", "PNEUMONIA"):
        for k in range(test):
            write_picture(root / f"test/{cls}/t{k}.jpeg", seed=900 + 10 * k + len(cls),
                          pneumonia=cls == "PNEUMONIA")  # fmt: skip
    write_mode_zoo(root / "train/NORMAL")
    write_picture(root / NESTED, seed=777, pneumonia=True, fmt="PNG")
    shutil.copyfile(root / DUP_OF_TEST_OF, root / DUP_OF_TEST)
    shutil.copyfile(root / DUP_IN_TRAIN_OF, root / DUP_IN_TRAIN)
    good = write_picture(root / CORRUPT, seed=555, pneumonia=False)
    good.write_bytes(good.read_bytes()[:150])
    for litter in (".DS_Store", "train/NORMAL/.DS_Store", "train/NORMAL/._n000.jpeg",
                   "__MACOSX/train/._x.jpeg"):  # fmt: skip
        (root / litter).parent.mkdir(parents=True, exist_ok=True)
        (root / litter).write_bytes(b"\x00\x05\x16\x07 not an image")
    (root / "README.txt").write_text("chest films")
    (root / "test/labels.csv").write_text("path,label\n")
    return root


def _import(src, home=None, **options):
    return import_dataset(
        "folder", str(src), home=home, size=SIZE, workers=1, progress=False, **options
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    src = write_split_tree(base / "xrays")
    manifest = _import(src, base / "home", seed=1)
    return src, manifest, DatasetStore.open("xrays", base / "home")


def _row(store, image_id):
    rows = store.meta.index[store.meta["image_id"] == image_id]
    assert len(rows) == 1, image_id
    return rows[0]


def test_manifest_of_a_split_tree(imported):
    _, manifest, store = imported
    assert (manifest.name, manifest.kind, manifest.task) == ("xrays", "folder", "binary")
    assert manifest.labels == ["pneumonia"] == [manifest.global_label]
    assert manifest.finding_labels == [] and not manifest.synthetic
    # 40 train pictures + 7 of the zoo + nested + 2 copies + corrupt + 8 test = 59 files;
    # 2 byte copies dropped, the corrupt file skipped.
    assert manifest.n_images == 56 == len(store.meta) == store.images.shape[0]
    assert store.images.shape[1:] == (SIZE, SIZE) and store.images.dtype == np.uint8
    assert manifest.splits["test"] == 8 and manifest.splits["val"] > 0
    assert manifest.label_counts["test"] == {"pneumonia": 4}
    notes = "\n".join(manifest.notes)
    assert "'PNEUMONIA' is the positive class (label 'pneumonia'), 'NORMAL' the negative" in notes
    assert "ignored 4 hidden or system entries" in notes
    assert "ignored 2 file(s) outside the class folders: README.txt, test/labels.csv" in notes
    assert NESTED in set(store.meta["image_id"])
    assert set(store.meta["format"]) == {"image", "dicom"}


def test_duplicates_dropped_test_copy_kept_and_reported(imported):
    _, manifest, store = imported
    ids = set(store.meta["image_id"])
    assert DUP_OF_TEST not in ids and DUP_OF_TEST_OF in ids
    assert DUP_IN_TRAIN not in ids and DUP_IN_TRAIN_OF in ids
    assert store.meta.loc[_row(store, DUP_OF_TEST_OF), "split"] == "test"
    notes = "\n".join(manifest.notes)
    assert "dropped 2 byte-identical duplicate file(s)" in notes
    assert f"{DUP_OF_TEST} = {DUP_OF_TEST_OF}" in notes and f"{DUP_IN_TRAIN} = " in notes
    assert "1 duplicate group(s) spanned splits" in notes


def test_modes_are_converted_to_one_gray_channel(imported):
    _, _, store = imported
    for name in FLAT_MODES:
        image = store.images[_row(store, f"train/NORMAL/{name}")].astype(int)
        assert abs(image - FLAT_LEVEL).max() <= 1, name
    wide = store.images[_row(store, WIDE)].astype(float)
    columns = wide.mean(axis=0)
    assert (np.diff(columns) > 0).all()  # the gradient survives, mapped min..max onto 0..255
    assert columns[0] < 20 and columns[-1] > 235
    lungs = lung_mask(SIZE, SIZE)
    for name in (DICOM, DICOM_NO_SUFFIX):
        image = store.images[_row(store, name)].astype(float)
        assert image[lungs].mean() + 40 < image[~lungs].mean(), name  # lungs dark, both
        assert store.meta.loc[_row(store, name), "format"] == "dicom"
    row = store.meta.loc[_row(store, WIDE)]
    assert (row["orig_width"], row["orig_height"]) == (64, 40)


def test_corrupt_file_skipped_and_named(imported):
    _, manifest, store = imported
    assert CORRUPT not in set(store.meta["image_id"])
    assert f"skipped 1 unreadable file(s): {CORRUPT}" in "\n".join(manifest.notes)


def test_test_split_kept_val_drawn_per_image_with_both_classes(imported):
    src, manifest, store = imported
    meta = store.meta
    test_files = {p.relative_to(src).as_posix() for p in (src / "test").rglob("*.jpeg")}
    assert set(meta.loc[meta["split"] == "test", "image_id"]) == test_files
    assert not meta.loc[meta["split"] == "val", "image_id"].str.startswith("test/").any()
    for split in ("train", "val", "test"):
        assert set(meta.loc[meta["split"] == split, "pneumonia"]) == {0, 1}, split
    assert meta["patient_id"].isna().all()
    notes = "\n".join(manifest.notes)
    assert "kept the source's test split (8 images) as it is" in notes
    assert "images of one patient may land on both sides" in notes
    assert "val_fraction=0.1, seed=1" in notes


def test_split_is_the_same_on_reimport_and_changes_with_the_seed(imported):
    src = imported[0]
    a, b = plan_folder(str(src), seed=1).rows, plan_folder(str(src), seed=1).rows
    assert a.equals(b)
    others = [plan_folder(str(src), seed=s).rows["split"] for s in (2, 3, 4)]
    assert any(not a["split"].equals(o) for o in others)


def test_flat_layout_draws_test_and_val(tmp_path):
    src = tmp_path / "flat"
    write_classes(src, {"normal": 30, "covid": 30})
    manifest = _import(src, val_fraction=0.2, test_fraction=0.2)
    assert manifest.labels == ["covid"] and manifest.name == "flat"
    assert manifest.splits == {"train": 36, "val": 12, "test": 12}
    for split in ("train", "val", "test"):
        assert 0 < manifest.label_counts[split]["covid"] < manifest.splits[split]
    assert "drew test and val from the 60 train/unsplit images" in "\n".join(manifest.notes)


def test_test_fraction_refused_when_the_source_has_a_test_split(tmp_path):
    src = write_split_tree(tmp_path / "src")
    with pytest.raises(DatasetError, match="own test split .* drop --test-fraction"):
        plan_folder(str(src), test_fraction=0.2)


@pytest.mark.parametrize(
    ("classes", "positive", "expected"),
    [
        (("NORMAL", "PNEUMONIA"), None, "pneumonia"),
        (("0", "1"), None, "1"),
        (("healthy", "Effusion"), None, "effusion"),
        (("No_Finding", "mass"), None, "mass"),
        (("cats", "dogs"), "dogs", "dogs"),
        (("cats", "dogs"), "CATS", "cats"),
    ],
)
def test_positive_class_rule(tmp_path, classes, positive, expected):
    src = tmp_path / "src"
    write_classes(src, dict.fromkeys(classes, 12))
    assert plan_folder(str(src), positive=positive).labels == [expected]


@pytest.mark.parametrize(
    ("classes", "positive", "message"),
    [
        (("cats", "dogs"), None, "no class is named normal.*pass --positive CLASS"),
        (("normal", "negative"), None, "both classes is named normal"),
        (("normal", "mass"), "normal", "names a normal class.*pass the other class"),
        (("normal", "mass"), "effusion", r"'effusion' is not one of the classes \['mass'"),
    ],
)
def test_ambiguous_positive_class_refused(tmp_path, classes, positive, message):
    src = tmp_path / "src"
    write_classes(src, dict.fromkeys(classes, 4))
    with pytest.raises(DatasetError, match=message):
        plan_folder(str(src), positive=positive)


# --- through the command line: exit 2, the problem and the fix, nothing written ------------


def _fails(capsys, src, *patterns, extra=()):
    argv = ["data", "import", "folder", str(src), "--size", str(SIZE), "--workers", "1"]
    assert main([*argv, "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    for pattern in patterns:
        assert pattern in err, err
    home = Path(os.environ["CXRKD_HOME"])
    assert not datasets_dir(home).exists() or not any(datasets_dir(home).iterdir())
    return err


def test_one_class_refused(tmp_path, capsys):
    write_classes(tmp_path / "src", {"PNEUMONIA": 6})
    _fails(capsys, tmp_path / "src", "one class folder, 'PNEUMONIA'", "needs two")


def test_empty_class_folder_refused(tmp_path, capsys):
    src = tmp_path / "src"
    write_classes(src / "train", {"NORMAL": 6, "PNEUMONIA": 6})
    write_classes(src / "test", {"NORMAL": 2, "PNEUMONIA": 2}, first_seed=50)
    for f in (src / "test/PNEUMONIA").iterdir():
        f.unlink()
    (src / "test/PNEUMONIA/.DS_Store").write_bytes(b"litter")
    _fails(capsys, src, "class folder test/PNEUMONIA/ holds no image files", "remove the folder")


def test_split_folder_lacking_a_class_refused(tmp_path, capsys):
    src = tmp_path / "src"
    write_classes(src / "train", {"NORMAL": 6, "PNEUMONIA": 6})
    write_classes(src / "test", {"NORMAL": 2}, first_seed=50)
    _fails(capsys, src, "test/ has class folder(s) ['NORMAL']", "a folder of each class")


def test_unsupported_files_and_loose_images_refused(tmp_path, capsys):
    src = tmp_path / "src"
    write_classes(src, {"NORMAL": 6, "PNEUMONIA": 6})
    (src / "NORMAL/notes.txt").write_text("x")
    Image.new("L", (8, 8)).save(src / "PNEUMONIA/scan.gif")
    _fails(capsys, src, "2 file(s)", "NORMAL/notes.txt, PNEUMONIA/scan.gif", "DICOM")
    (src / "NORMAL/notes.txt").unlink()
    (src / "PNEUMONIA/scan.gif").unlink()
    write_picture(src / "stray.jpeg", seed=5, pneumonia=False)
    _fails(capsys, src, "1 image file(s) lie outside the class folders", "stray.jpeg")


def test_split_and_class_folders_mixed_refused(tmp_path, capsys):
    src = tmp_path / "src"
    write_classes(src / "train", {"NORMAL": 4, "PNEUMONIA": 4})
    write_classes(src, {"NORMAL": 2}, first_seed=50)
    _fails(capsys, src, "mixes split folders ['train'] with other folders ['NORMAL']")


def test_symbolic_link_refused(tmp_path, capsys):
    src = tmp_path / "src"
    write_classes(src, {"NORMAL": 4, "PNEUMONIA": 4})
    outside = write_picture(tmp_path / "elsewhere.jpeg", seed=9, pneumonia=False)
    (src / "NORMAL/linked.jpeg").symlink_to(outside)
    _fails(capsys, src, "1 symbolic link(s)", "NORMAL/linked.jpeg", "OUTSIDE SRC")


def test_missing_src_and_file_src_refused(tmp_path, capsys):
    _fails(capsys, tmp_path / "nope", "does not exist", "SRC/<class>/")
    (tmp_path / "a.zip").write_bytes(b"PK")
    _fails(capsys, tmp_path / "a.zip", "is a file, not a folder")


# --- the store's users -------------------------------------------------------------------


def test_cli_import_names_unreadable_files_then_show_and_preview(tmp_path, capsys):
    src = write_split_tree(tmp_path / "xrays")
    argv = ["data", "import", "folder", str(src), "--name", "xr", "--size", str(SIZE)]
    assert main([*argv, "--workers", "1", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert f"note: skipped 1 unreadable file(s): {CORRUPT}" in out
    assert str(src / CORRUPT) in err  # the writer's log names the file and the error
    assert "dataset xr (folder, binary, 16px)" in out
    assert main(["data", "show", "xr"]) == 0
    out = capsys.readouterr().out
    assert "task        binary; labels pneumonia" in out and "test        8 images" in out
    assert main(["data", "preview", "xr", "--out", str(tmp_path / "p.png"), "--n", "4"]) == 0
    with Image.open(tmp_path / "p.png") as sheet:
        assert sheet.size[0] == 2 * 96 and np.asarray(sheet).std() > 5


def test_pipeline_and_the_studies_dataset_check(tmp_path):
    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.study_dataset import open_dataset
    from cxrkd.search.study_options import study_with_options
    from cxrkd.trainables.context import DataBundle
    from cxrkd.trainables.data.pipeline import BatchLoader
    from cxrkd.trainables.errors import CxrkdError

    src = tmp_path / "src"
    write_classes(src, {"NORMAL": 16, "PNEUMONIA": 16})
    _import(src, name="folder-pneumonia")
    study = study_with_options(RunOptions(study="pneumonia-kd", profile="paper"))
    store = open_dataset(study, "folder-pneumonia")  # a binary import passes the check
    bundle = DataBundle.from_store(store)
    assert bundle.info.label_columns() == ((), 0) and set(bundle.splits) == {
        "train",
        "val",
        "test",
    }
    train = bundle.split("train")
    x, y = next(iter(BatchLoader(train.images, train.labels, batch_size=8, shuffle=True,
                                 device="cpu")))  # fmt: skip
    assert x.shape == (8, 1, SIZE, SIZE) and set(y.flatten().tolist()) <= {0.0, 1.0}
    lowres = study_with_options(RunOptions(study="lowres-kd", profile="paper"))
    with pytest.raises(CxrkdError, match="needs a multilabel dataset.*'folder-pneumonia' is "
                       "binary"):  # fmt: skip
        open_dataset(lowres, "folder-pneumonia")
