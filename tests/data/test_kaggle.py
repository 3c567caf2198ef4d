"""The Kaggle pneumonia importer, end to end on a tiny tree of real JPEGs, and its decoder."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from fixtures_kaggle import (
    CORRUPT,
    DUPLICATE_IN_TEST,
    DUPLICATE_IN_TEST_OF,
    DUPLICATE_IN_TRAIN,
    DUPLICATE_IN_TRAIN_OF,
    DUPLICATE_OF_TEST,
    DUPLICATE_OF_TEST_OF,
    JPG_FILE,
    MACOS_LITTER,
    PNG_FILE,
    UNPARSEABLE,
    image_bytes,
    kaggle_names,
    write_kaggle_tree,
)
from PIL import Image

from cxrkd.search.cli import main
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.jpeg import decode_image_file
from cxrkd.trainables.data.kaggle import IMPORTER_VERSION, parse_name, plan_kaggle
from cxrkd.trainables.data.splits import assert_patient_disjoint
from cxrkd.trainables.data.store import DatasetError, DatasetStore, datasets_dir


def _import(src, home, **options):
    return import_dataset(
        "kaggle-pneumonia", str(src), home=home, size=32, workers=1, progress=False, **options
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    base = tmp_path_factory.mktemp("kaggle")
    src = write_kaggle_tree(base / "download")
    manifest = _import(src, base / "home", val_fraction=0.25, seed=3)
    return src, base / "home", manifest, DatasetStore.open("kaggle-pneumonia", base / "home")


def _row(store, image_id):
    rows = store.meta[store.meta["image_id"] == image_id]
    assert len(rows) == 1, image_id
    return rows.iloc[0]


# The default fixture tree: 16 + 16 train, 8 + 8 val, 8 + 8 test generated files (train
# persons 1-11, val persons 12-16, test persons 1-5 again) plus 7 quirk files: 71 files.
TRAIN_AND_VAL = {
    f"{folder}/{name}"
    for folder, names in kaggle_names(
        n_per_class_train=16, n_per_class_test=8, n_val_per_class=8
    ).items()
    for name in names
    if not folder.startswith("test/")
}


def test_manifest_fields_and_counts(imported):
    _, _, manifest, store = imported
    assert (manifest.name, manifest.kind, manifest.task) == (
        "kaggle-pneumonia",
        "kaggle-pneumonia",
        "binary",
    )
    assert manifest.labels == ["pneumonia"] and manifest.global_label == "pneumonia"
    assert manifest.finding_labels == [] and manifest.synthetic is False
    assert manifest.resolution == 32 and manifest.options["val_fraction"] == 0.25
    assert manifest.options["importer_version"] == IMPORTER_VERSION == 2
    # 71 files - 3 byte-identical copies - 1 corrupt file; nothing dropped for person numbers.
    assert manifest.n_images == 67 == len(store.meta) == store.images.shape[0]
    assert manifest.splits["test"] == 16
    # 48 generated train/val files + the PNG, the .jpg and the unparseable name.
    assert manifest.splits["train"] + manifest.splits["val"] == 51
    assert 0 < manifest.splits["val"] < manifest.splits["train"]
    assert manifest.label_counts["test"] == {"pneumonia": 8}
    assert (
        manifest.label_counts["train"]["pneumonia"] + manifest.label_counts["val"]["pneumonia"]
        == 26
    )
    assert store.images.dtype == np.uint8 and store.images.shape[1:] == (32, 32)
    assert store.images.std() > 5  # real pixels, not zeros


def test_train_images_kept_when_person_numbers_restart_in_test(imported):
    _, _, manifest, store = imported
    meta = store.meta
    pool = meta[meta["split"] != "test"]
    # Every train/val file is imported, though person1..person5 also name test children.
    assert set(pool["image_id"]) == TRAIN_AND_VAL | {PNG_FILE, JPG_FILE, UNPARSEABLE}
    train_person1 = meta.loc[meta["patient_id"] == "person1", "image_id"]
    assert sorted(train_person1) == [
        "train/PNEUMONIA/person1_bacteria_1.jpeg",
        "train/PNEUMONIA/person1_virus_1.jpeg",
    ]
    test_person1 = meta.loc[meta["patient_id"] == "test/person1", "image_id"]
    assert sorted(test_person1) == [
        "test/PNEUMONIA/person1_bacteria_1.jpeg",
        "test/PNEUMONIA/person1_virus_1.jpeg",
    ]
    test_ids = meta.loc[meta["split"] == "test", "patient_id"]
    assert test_ids.str.startswith("test/").all()
    assert not pool["patient_id"].dropna().str.startswith("test/").any()
    notes = "\n".join(manifest.notes)
    assert "5 patient number(s) occur in both train/val and test" in notes
    assert "train/val image(s) of" not in notes  # version 1's "dropped N train/val image(s)"


def test_pictures_carry_a_learnable_class_signal(imported):
    """The SYNTHETIC fixture pictures: pneumonia films have bright lung opacities, so mean
    brightness alone ranks them above normal films (what a small CNN picks up first)."""
    _, _, _, store = imported
    scores = store.images.reshape(len(store.meta), -1).astype(float).mean(1)
    labels = store.meta["pneumonia"].to_numpy()
    pos, neg = scores[labels == 1], scores[labels == 0]
    assert ((pos[:, None] > neg).mean()) > 0.9


def test_duplicates_dropped_and_reported(imported):
    _, _, manifest, store = imported
    ids = set(store.meta["image_id"])
    assert DUPLICATE_IN_TRAIN not in ids and DUPLICATE_IN_TRAIN_OF in ids
    assert DUPLICATE_OF_TEST not in ids and DUPLICATE_OF_TEST_OF in ids
    assert DUPLICATE_IN_TEST not in ids and DUPLICATE_IN_TEST_OF in ids
    notes = "\n".join(manifest.notes)
    assert "dropped 3 byte-identical duplicate file(s)" in notes
    assert "1 duplicate group(s) spanned official splits: kept the test copy" in notes


def test_patient_ids_and_pathogen(imported):
    _, _, _, store = imported
    virus = _row(store, "train/PNEUMONIA/person1_virus_1.jpeg")
    bacteria = _row(store, "train/PNEUMONIA/person1_bacteria_1.jpeg")
    assert (virus["patient_id"], virus["pathogen"], virus["pneumonia"]) == (
        "person1",
        "virus",
        1,
    )
    assert (bacteria["patient_id"], bacteria["pathogen"]) == ("person1", "bacteria")
    assert virus["split"] == bacteria["split"]
    normal2 = [_row(store, f"train/NORMAL/NORMAL2-IM-0385-000{k}.jpeg") for k in (1, 2, 3)]
    assert {r["patient_id"] for r in normal2} == {"NORMAL2-IM-0385"}
    assert len({r["split"] for r in normal2}) == 1
    normal = _row(store, "train/NORMAL/IM-0116-0001.jpeg")
    assert (normal["patient_id"], normal["pathogen"], normal["pneumonia"]) == ("IM-0116", "none", 0)
    test_normal = _row(store, "test/NORMAL/NORMAL2-IM-0007-0001.jpeg")
    assert test_normal["patient_id"] == "test/NORMAL2-IM-0007"
    odd = _row(store, UNPARSEABLE)
    assert pd.isna(odd["patient_id"]) and pd.isna(odd["pathogen"])
    assert _row(store, JPG_FILE)["patient_id"] == "person1900"
    png = _row(store, PNG_FILE)
    assert (png["patient_id"], png["orig_width"], png["orig_height"]) == ("IM-0995", 64, 77)


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("person1_bacteria_1", ("person1", "bacteria")),
        ("person1000_virus_1681", ("person1000", "virus")),
        ("IM-0001-0001", ("IM-0001", None)),
        ("NORMAL2-IM-0012-0001", ("NORMAL2-IM-0012", None)),
        ("person1_bacteria", (None, None)),
        ("IM-0001", (None, None)),
        ("xperson1_virus_2", (None, None)),
    ],
)
def test_parse_name(stem, expected):
    assert parse_name(stem) == expected


def test_official_val_folded_and_test_untouched(imported):
    src, _, manifest, store = imported
    meta = store.meta
    official_val = meta[meta["official_split"] == "val"]
    assert len(official_val) == 16 and set(official_val["split"]) <= {"train", "val"}
    test_files = sorted(
        p.relative_to(src / "chest_xray").as_posix()
        for p in (src / "chest_xray" / "test").rglob("*.jpeg")
    )
    assert DUPLICATE_IN_TEST in test_files  # the one byte copy inside test is imported once
    test_files.remove(DUPLICATE_IN_TEST)
    assert sorted(meta.loc[meta["split"] == "test", "image_id"]) == test_files
    assert set(meta.loc[meta["official_split"] == "test", "split"]) == {"test"}
    assert "folded the official val split (16 images) into train" in "\n".join(manifest.notes)


def test_no_patient_in_two_splits(imported):
    _, _, _, store = imported
    meta = store.meta
    assert_patient_disjoint(meta)
    assert meta.groupby("patient_id")["split"].nunique().max() == 1
    # Validation is drawn from train + official val by patient: no patient on both sides.
    train = set(meta.loc[meta["split"] == "train", "patient_id"].dropna())
    val = set(meta.loc[meta["split"] == "val", "patient_id"].dropna())
    assert train and val and not train & val
    # person1's two films (bacteria and virus) stay together, whichever side they are on.
    assert meta.loc[meta["patient_id"] == "person1", "split"].nunique() == 1


def test_plan_of_colliding_person_numbers_keeps_every_train_row(tmp_path):
    """A larger tree; test person numbers restart at 1 and cover many train numbers."""
    src = write_kaggle_tree(
        tmp_path / "src", n_per_class_train=150, n_per_class_test=40, quirks=False
    )
    for seed in range(3):
        rows = plan_kaggle(str(src), seed=seed).rows
        test_numbers = set(rows.loc[rows["split"] == "test", "patient_id"].str[5:])
        shared = test_numbers & set(rows["patient_id"])  # every test person: person1-25
        assert shared == {f"person{k}" for k in range(1, 26)}
        assert len(rows) == 2 * (150 + 8 + 40)
        assert int(rows["pneumonia"].sum()) == 150 + 8 + 40
        assert_patient_disjoint(rows)
        pool = rows[rows["split"] != "test"]
        by_split = pool.groupby("patient_id")["split"].nunique()
        assert by_split.max() == 1 and set(pool["split"]) == {"train", "val"}
        assert set(pool.loc[pool["split"] == "val", "pneumonia"]) == {0, 1}


def test_every_unreadable_file_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXRKD_HOME", str(tmp_path / "home"))
    src = write_kaggle_tree(tmp_path / "src", n_per_class_train=100, quirks=False)
    broken = sorted((src / "chest_xray/train/PNEUMONIA").iterdir())[:3]
    for f in broken:  # 3 of 232 files: under the 2% limit, so skipped, not fatal
        f.write_bytes(f.read_bytes()[:200])
    argv = ["data", "import", "kaggle-pneumonia", str(src), "--name", "k", "--size", "16"]
    assert main([*argv, "--workers", "1", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    names = [f.relative_to(src / "chest_xray").as_posix() for f in broken]
    assert f"note: skipped 3 unreadable file(s): {', '.join(names)}" in out
    for f in broken:
        assert str(f) in err
    assert DatasetStore.open("k").manifest.n_images == 229


def test_quirks_reported(imported):
    _, _, manifest, store = imported
    notes = "\n".join(manifest.notes)
    assert CORRUPT not in set(store.meta["image_id"])
    assert f"skipped 1 unreadable file(s): {CORRUPT}" in notes
    assert "1 file name(s) match no Kaggle naming pattern" in notes and UNPARSEABLE in notes
    assert f"ignored {MACOS_LITTER} macOS metadata entries" in notes
    assert "nested duplicate copy" in notes
    assert not store.meta["image_id"].str.contains("__MACOSX|DS_Store|/\\._").any()


def test_store_of_the_previous_importer_version_is_not_reused(tmp_path):
    """Version 1 dropped train images of person numbers seen in test; --exist-ok must not
    hand such a store back as if it were what this version would write."""
    src = write_kaggle_tree(tmp_path / "src")
    home = tmp_path / "home"
    first = _import(src, home)
    assert _import(src, home, exist_ok=True).fingerprint == first.fingerprint  # same version
    path = datasets_dir(home) / "kaggle-pneumonia" / "manifest.json"
    old = json.loads(path.read_text())
    old["options"].pop("importer_version", None)  # version 1 wrote none
    old["n_images"] = 59  # 8 images of train persons 1-5 were dropped
    path.write_text(json.dumps(old))
    with pytest.raises(DatasetError) as info:
        _import(src, home, exist_ok=True)
    message = str(info.value)
    assert "version 1 of the kaggle-pneumonia importer; this is version 2" in message
    assert "cxrkd data rm kaggle-pneumonia" in message
    shutil.rmtree(datasets_dir(home) / "kaggle-pneumonia")
    assert _import(src, home, exist_ok=True).n_images == 67  # the new counts


def test_same_rows_from_chest_xray_folder_and_seed_is_deterministic(imported):
    src = imported[0]
    a = plan_kaggle(str(src), val_fraction=0.25, seed=3).rows
    b = plan_kaggle(str(src / "chest_xray"), val_fraction=0.25, seed=3).rows
    assert a.equals(b)
    other = plan_kaggle(str(src), val_fraction=0.25, seed=4).rows
    assert not a["split"].equals(other["split"])


def test_existing_name_is_refused(imported):
    src, home, _, _ = imported
    with pytest.raises(DatasetError, match="already exists.*another --name"):
        _import(src, home)
    assert _import(src, home, name="kaggle-2").name == "kaggle-2"


def _assert_bad(src, home, *patterns):
    with pytest.raises(DatasetError) as info:
        _import(src, home)
    for pattern in patterns:
        assert pattern in str(info.value), str(info.value)
    assert not datasets_dir(home).exists()  # refused before anything was written


def test_missing_src(tmp_path):
    _assert_bad(tmp_path / "nope", tmp_path / "home", "does not exist", "chest_xray/{train,val")


def test_src_is_a_file(tmp_path):
    (tmp_path / "archive.zip").write_bytes(b"PK")
    _assert_bad(tmp_path / "archive.zip", tmp_path / "home", "is a file", "unzip")


def test_wrong_layout(tmp_path):
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "chest_xray" / "train").mkdir(parents=True)
    _assert_bad(
        tmp_path / "src",
        tmp_path / "home",
        "expected SRC/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}",
        "found ['chest_xray/', 'images/', 'chest_xray/train']",
    )


def test_empty_class(tmp_path):
    src = write_kaggle_tree(tmp_path / "src", quirks=False)
    for f in (src / "chest_xray/train/NORMAL").iterdir():
        f.unlink()
    shutil.rmtree(src / "chest_xray/test/PNEUMONIA")
    _assert_bad(src, tmp_path / "home", "no images in train/NORMAL, test/PNEUMONIA", "again")


def test_unsupported_files_listed(tmp_path):
    src = write_kaggle_tree(tmp_path / "src", quirks=False)
    (src / "chest_xray/train/NORMAL/notes.txt").write_text("x")
    Image.new("L", (8, 8)).save(src / "chest_xray/test/PNEUMONIA/scan.gif")
    _assert_bad(
        src,
        tmp_path / "home",
        "2 file(s)",
        "test/PNEUMONIA/scan.gif",
        "train/NORMAL/notes.txt",
        "accepted extensions: .jpeg .jpg .png",
    )


def test_unexpected_class_folder(tmp_path):
    src = write_kaggle_tree(tmp_path / "src", quirks=False)
    (src / "chest_xray/train/COVID").mkdir()
    (src / "chest_xray/train/COVID/a.jpeg").write_bytes(b"x")
    _assert_bad(src, tmp_path / "home", "train/COVID", "only NORMAL/ and PNEUMONIA/")


def test_bad_val_fraction(tmp_path):
    src = write_kaggle_tree(tmp_path / "src", quirks=False)
    with pytest.raises(DatasetError, match=r"val_fraction must be in \(0, 1\), got 1.5"):
        _import(src, tmp_path / "home", val_fraction=1.5)


def test_too_many_corrupt_files_fail(tmp_path):
    src = write_kaggle_tree(tmp_path / "src", quirks=False)
    for f in sorted((src / "chest_xray/train/PNEUMONIA").iterdir())[:3]:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DatasetError, match="3 of 64 files could not be read"):
        _import(src, tmp_path / "home")
    assert not (datasets_dir(tmp_path / "home") / "kaggle-pneumonia").exists()


def _jpeg(width, height, *, rgb, path):
    path.write_bytes(image_bytes(width=width, height=height, rgb=rgb, seed=7))
    return {"source_path": str(path)}


def test_decoder_uses_reduced_scale_for_large_jpegs(tmp_path):
    row = _jpeg(800, 1000, rgb=True, path=tmp_path / "big.jpeg")
    image, width, height = decode_image_file(row, 64)
    assert (width, height) == (800, 1000)
    assert image.ndim == 2 and image.dtype == np.uint8
    assert image.shape == (125, 100)  # 1/8 scale: smaller than the file, not smaller than 64
    full = Image.open(row["source_path"]).convert("L").resize((64, 64), Image.Resampling.BOX)
    small = Image.fromarray(image).resize((64, 64), Image.Resampling.BOX)
    assert np.abs(np.asarray(full, float) - np.asarray(small, float)).mean() < 3


def test_decoder_keeps_full_scale_when_target_is_close(tmp_path):
    image, width, height = decode_image_file(_jpeg(60, 80, rgb=False, path=tmp_path / "a.jpg"), 32)
    assert image.shape == (80, 60) and (width, height) == (60, 80)


def test_decoder_png_modes(tmp_path):
    wide = np.linspace(1000, 5000, 40 * 30).reshape(30, 40).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image, width, height = decode_image_file({"source_path": str(tmp_path / "wide.png")}, 16)
    assert (width, height) == (40, 30) and image.dtype == np.uint8
    assert (image.min(), image.max()) == (0, 255)  # min..max mapped, not clipped at 255
    rgba = Image.new("RGBA", (20, 10), (200, 100, 50, 128))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    (tmp_path / "rgba.png").write_bytes(buffer.getvalue())
    image, _, _ = decode_image_file({"source_path": str(tmp_path / "rgba.png")}, 8)
    assert image.shape == (10, 20) and 100 < image[0, 0] < 140
