"""The ``folder`` importer with three or more class folders: a multi-class store (one 0/1
column per class, exactly one 1 per image), on small trees of real PNG, JPEG and DICOM files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_dicom import chest_values, write_dicom
from test_folder_import import _fails, _import, write_classes

from cxrkd.search.cli import main
from cxrkd.trainables.data.pipeline import DatasetInfo
from cxrkd.trainables.data.store import DatasetStore

CLASSES = ["COVID", "NORMAL", "PNEUMONIA"]
LABELS = ["covid", "normal", "pneumonia"]


@pytest.fixture
def flat(tmp_path):
    src = tmp_path / "three"
    write_classes(src, {"NORMAL": 14, "PNEUMONIA": 12, "COVID": 10})
    write_dicom(src / "COVID" / "scan.dcm", chest_values(40, 36), window=(2048.0, 4096.0))
    return src


def test_three_class_folders_make_a_multiclass_store(flat):
    manifest = _import(flat, seed=3)
    assert (manifest.task, manifest.labels, manifest.finding_labels) == ("multiclass", LABELS, [])
    assert manifest.global_label == "covid"  # the first class: a store names one
    store = DatasetStore.open("three")
    meta = store.meta
    # one column per class, exactly one 1 per image, and it is the image's folder
    onehot = meta[LABELS].to_numpy()
    assert (onehot.sum(axis=1) == 1).all()
    assert [LABELS[k] for k in onehot.argmax(axis=1)] == meta["class"].str.lower().tolist()
    assert meta.loc[meta["image_id"] == "COVID/scan.dcm", "format"].item() == "dicom"
    assert manifest.n_images == 37
    for split, n in manifest.splits.items():  # every class in every split, counts add up
        counts = manifest.label_counts[split]
        assert sum(counts.values()) == n and min(counts.values()) >= 1, split
    notes = "\n".join(manifest.notes)
    assert f"a multi-class task of 3 classes, labels {LABELS}" in notes
    assert "stratified by 'class'" in notes
    info = DatasetInfo.from_store(store)
    assert info.num_outputs == 3 and store.label_matrix("test").shape[1] == 3


def test_given_splits_are_kept_and_every_class_is_in_each(tmp_path):
    src = tmp_path / "given"
    write_classes(src / "train", {c: 6 for c in CLASSES})
    write_classes(src / "test", {c: 2 for c in CLASSES}, first_seed=100)
    manifest = _import(src, val_fraction=0.3)  # 0.1 of 18 images: 2, fewer than 3 classes
    assert manifest.task == "multiclass" and manifest.splits["test"] == 6
    assert sorted(manifest.label_counts["val"].values()) == [1, 2, 2]  # 5 drawn, by class
    assert manifest.label_counts["test"] == dict.fromkeys(LABELS, 2)
    assert "kept the source's test split (6 images) as it is" in "\n".join(manifest.notes)


def test_data_show_json_says_multiclass(flat, capsys):
    _import(flat)
    capsys.readouterr()
    assert main(["data", "show", "three", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["task"] == "multiclass" and shown["labels"] == LABELS


def test_positive_is_refused_for_three_classes(flat, capsys):
    _fails(
        capsys, flat, "--positive 'COVID' picks the positive class of a binary task",
        "drop --positive", extra=["--positive", "COVID"],
    )  # fmt: skip


def test_class_folders_differing_only_in_case_are_refused(tmp_path, capsys):
    src = tmp_path / "src"
    write_classes(src, {"Covid": 6, "COVID": 6, "NORMAL": 6})
    _fails(capsys, src, "differ only in case", "rename or merge them")


def test_a_class_too_small_for_every_split_is_refused(tmp_path, capsys):
    src = tmp_path / "src"
    write_classes(src, {"NORMAL": 12, "PNEUMONIA": 12, "COVID": 1})
    err = _fails(capsys, src, "has no images of class(es) ['COVID']", "add more images")
    assert "every split needs images of every class" in err


def test_binary_folders_are_unchanged(tmp_path):
    """Two classes still make the binary store of before (its splits are pinned elsewhere)."""
    src = tmp_path / "two"
    write_classes(src, {"NORMAL": 10, "PNEUMONIA": 10})
    manifest = _import(src)
    assert (manifest.task, manifest.labels) == ("binary", ["pneumonia"])
    meta = DatasetStore.open("two").meta
    assert "normal" not in meta.columns
    np.testing.assert_array_equal(meta["pneumonia"], meta["class"].eq("PNEUMONIA"))
