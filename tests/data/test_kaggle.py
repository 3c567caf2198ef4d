"""The Kaggle pneumonia importer, end to end on a tiny tree of real JPEGs, and its decoder."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from fixtures_kaggle import (
    CORRUPT,
    DUPLICATE_IN_TRAIN,
    DUPLICATE_OF_TEST,
    JPG_FILE,
    LEAKED_PATIENT_FILE,
    PNG_FILE,
    UNPARSEABLE,
    image_bytes,
    write_kaggle_tree,
)
from PIL import Image

from trainables.data.importers import import_dataset
from trainables.data.jpeg import decode_image_file
from trainables.data.kaggle import parse_name, plan_kaggle
from trainables.data.splits import assert_patient_disjoint
from trainables.data.store import DatasetError, DatasetStore, datasets_dir


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
    # 65 files - 2 duplicates - 1 leaked patient image - 1 corrupt file.
    assert manifest.n_images == 61 == len(store.meta) == store.images.shape[0]
    assert manifest.splits["test"] == 16
    assert manifest.splits["train"] + manifest.splits["val"] == 45
    assert 0 < manifest.splits["val"] < manifest.splits["train"]
    assert manifest.label_counts["test"] == {"pneumonia": 8}
    assert (
        manifest.label_counts["train"]["pneumonia"] + manifest.label_counts["val"]["pneumonia"]
        == 26
    )
    assert store.images.dtype == np.uint8 and store.images.shape[1:] == (32, 32)
    assert store.images.std() > 5  # real pixels, not zeros


def test_duplicates_dropped_and_reported(imported):
    _, _, manifest, store = imported
    ids = set(store.meta["image_id"])
    assert DUPLICATE_IN_TRAIN not in ids and "train/PNEUMONIA/person1001_bacteria_2932.jpeg" in ids
    assert DUPLICATE_OF_TEST not in ids and "test/NORMAL/IM-0003-0001.jpeg" in ids
    notes = "\n".join(manifest.notes)
    assert "dropped 2 byte-identical duplicate file(s)" in notes
    assert "1 duplicate group(s) spanned official splits: kept the test copy" in notes


def test_patient_ids_and_pathogen(imported):
    _, _, _, store = imported
    virus = _row(store, "train/PNEUMONIA/person1000_virus_1681.jpeg")
    bacteria = _row(store, "train/PNEUMONIA/person1000_bacteria_2931.jpeg")
    assert (virus["patient_id"], virus["pathogen"], virus["pneumonia"]) == (
        "person1000",
        "virus",
        1,
    )
    assert (bacteria["patient_id"], bacteria["pathogen"]) == ("person1000", "bacteria")
    assert virus["split"] == bacteria["split"]
    normal2 = [_row(store, f"train/NORMAL/NORMAL2-IM-0381-000{k}.jpeg") for k in (1, 2)]
    assert {r["patient_id"] for r in normal2} == {"NORMAL2-IM-0381"}
    assert normal2[0]["split"] == normal2[1]["split"]
    normal = _row(store, "train/NORMAL/IM-0115-0001.jpeg")
    assert (normal["patient_id"], normal["pathogen"], normal["pneumonia"]) == ("IM-0115", "none", 0)
    odd = _row(store, UNPARSEABLE)
    assert pd.isna(odd["patient_id"]) and pd.isna(odd["pathogen"])
    assert _row(store, JPG_FILE)["patient_id"] == "person1060"
    png = _row(store, PNG_FILE)
    assert (png["patient_id"], png["orig_width"], png["orig_height"]) == ("IM-0300", 64, 77)


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
    assert len(official_val) == 4 and set(official_val["split"]) <= {"train", "val"}
    test_files = sorted(
        p.relative_to(src / "chest_xray").as_posix()
        for p in (src / "chest_xray" / "test").rglob("*.jpeg")
    )
    assert sorted(meta.loc[meta["split"] == "test", "image_id"]) == test_files
    assert set(meta.loc[meta["official_split"] == "test", "split"]) == {"test"}
    assert "folded the official val split (4 images) into train" in "\n".join(manifest.notes)


def test_no_patient_in_two_splits(imported):
    _, _, manifest, store = imported
    assert_patient_disjoint(store.meta)
    assert store.meta.groupby("patient_id")["split"].nunique().max() == 1
    # person1 has images in test, so its train image is dropped rather than leaked.
    assert LEAKED_PATIENT_FILE not in set(store.meta["image_id"])
    assert set(store.meta.loc[store.meta["patient_id"] == "person1", "split"]) == {"test"}
    assert "dropped 1 train/val image(s) of 1 patient(s)" in "\n".join(manifest.notes)


def test_quirks_reported(imported):
    _, _, manifest, store = imported
    notes = "\n".join(manifest.notes)
    assert CORRUPT not in set(store.meta["image_id"])
    assert "skipped 1 unreadable file(s)" in notes
    assert "1 file name(s) match no Kaggle naming pattern" in notes and UNPARSEABLE in notes
    assert "ignored 6 macOS metadata entries" in notes
    assert "nested duplicate copy" in notes
    assert not store.meta["image_id"].str.contains("__MACOSX|DS_Store|/\\._").any()


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
    with pytest.raises(DatasetError, match="3 of 58 files could not be read"):
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
