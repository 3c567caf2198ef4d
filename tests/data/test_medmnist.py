"""The MedMNIST importer on tiny npz files written here (PneumoniaMNIST and ChestMNIST shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrkd.trainables.data.import_plan import resize_square
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.medmnist import CHEST_LABELS, KEYS, npz_array, plan_medmnist
from cxrkd.trainables.data.store import DatasetError, DatasetStore, datasets_dir

COUNTS = {"train": 7, "val": 3, "test": 4}


def write_npz(path, *, side=28, width=1, channels=None, compressed=True, seed=0, **override):
    """A MedMNIST-shaped npz; ``override`` replaces or (with None) drops arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in COUNTS.items():
        shape = (n, side, side) if channels is None else (n, side, side, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = rng.integers(0, 2, (n, width), dtype=np.uint8)
        labels[0] = 0  # at least one all-negative row per split, for `abnormal`
        arrays[f"{split}_labels"] = labels
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path, arrays


def test_pneumoniamnist_imports_binary_with_official_splits(tmp_path):
    path, arrays = write_npz(tmp_path / "pneumoniamnist_28.npz")
    manifest = import_dataset(
        "medmnist", str(path), size=28, home=tmp_path, workers=1, progress=False
    )
    assert manifest.name == "pneumoniamnist_28" and manifest.task == "binary"
    assert manifest.labels == ["pneumonia"] and manifest.global_label == "pneumonia"
    assert manifest.finding_labels == [] and manifest.splits == COUNTS
    store = DatasetStore.open("pneumoniamnist_28", tmp_path)
    for split in COUNTS:
        images, labels = store.split_arrays(split)
        np.testing.assert_array_equal(images, arrays[f"{split}_images"])  # same size: exact
        np.testing.assert_array_equal(labels[:, 0], arrays[f"{split}_labels"][:, 0])
    assert store.meta["patient_id"].isna().all()
    assert (store.meta[["orig_width", "orig_height"]] == 28).all().all()


def test_chestmnist_multilabel_memmapped_and_resized(tmp_path):
    path, arrays = write_npz(
        tmp_path / "chestmnist_64.npz", side=64, width=14, channels=1, compressed=False
    )
    manifest = import_dataset(
        "medmnist", str(path), size=32, home=tmp_path, workers=2, progress=False
    )
    assert manifest.task == "multilabel" and manifest.global_label == "abnormal"
    assert manifest.labels == [*CHEST_LABELS, "abnormal"]
    assert manifest.finding_labels[:3] == ["atelectasis", "cardiomegaly", "effusion"]
    store = DatasetStore.open("chestmnist_64", tmp_path)
    images, labels = store.split_arrays("val")
    source = arrays["val_labels"]
    np.testing.assert_array_equal(labels[:, :14], source)
    np.testing.assert_array_equal(labels[:, 14], source.any(axis=1))
    assert labels[0, 14] == 0 and labels[:, 14].sum() > 0
    expected = [resize_square(im[:, :, 0], 32) for im in arrays["val_images"]]
    np.testing.assert_array_equal(images, np.stack(expected))


def test_rgb_images_become_luma(tmp_path):
    path, arrays = write_npz(tmp_path / "pneumoniamnist.npz", channels=3)
    plan = plan_medmnist(str(path))
    row = plan.rows[plan.rows["split"] == "test"].iloc[2].to_dict()
    image, width, height = plan.decode(row, 28)
    expected = np.asarray(Image.fromarray(arrays["test_images"][2]).convert("L"))
    assert image.dtype == np.uint8 and (width, height) == (28, 28)
    assert np.abs(image.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_array_reads_members_both_ways(tmp_path, compressed):
    path, arrays = write_npz(tmp_path / "x.npz", compressed=compressed)
    # The file's own mtime, as the importer passes it: the cache is per process, and a passing
    # test's tmp_path is deleted, so the next test can get the same path for another file.
    array = npz_array(str(path), "train_images", path.stat().st_mtime_ns)
    assert isinstance(array, np.memmap) != compressed
    np.testing.assert_array_equal(array, arrays["train_images"])


def test_default_name_and_explicit_name(tmp_path):
    path, _ = write_npz(tmp_path / "pneumoniamnist_128.npz", side=8)
    assert plan_medmnist(str(path)).name == "pneumoniamnist_128"
    assert plan_medmnist(str(path), name="pm").name == "pm"


def _bad(tmp_path, case):
    n = COUNTS["train"]
    if case == "not_npz":
        path = tmp_path / "pneumoniamnist.npz"
        path.write_text("image_id,label\n")
        return path
    override = {
        "missing_keys": {"val_images": None, "test_labels": None},
        "label_shape": {f"{s}_labels": np.zeros((c, 3), np.uint8) for s, c in COUNTS.items()},
        "count_mismatch": {"train_labels": np.zeros((n + 2, 1), np.uint8)},
        "not_binary": {"train_labels": np.full((n, 1), 4, np.uint8)},
        "float_images": {"test_images": np.zeros((COUNTS["test"], 28, 28), np.float32)},
    }[case]
    return write_npz(tmp_path / "pneumoniamnist.npz", **override)[0]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("not_npz", ["not an .npz"]),
        ("missing_keys", ["['val_images', 'test_labels']", str(list(KEYS))]),
        ("label_shape", ["(7, 3)", "(n, 14) for ChestMNIST"]),
        ("count_mismatch", ["7 images", "9 rows"]),
        ("not_binary", ["[4]", "not 0/1"]),
        ("float_images", ["float32", "expected uint8"]),
    ],
)
def test_bad_input_is_refused_before_writing(tmp_path, case, words):
    path = _bad(tmp_path, case)
    with pytest.raises(DatasetError) as err:
        import_dataset("medmnist", str(path), size=28, home=tmp_path, progress=False)
    for word in words:
        assert word in str(err.value)
    assert not datasets_dir(tmp_path).exists()


def test_other_medmnist_sets_are_refused(tmp_path):
    path, _ = write_npz(tmp_path / "breastmnist_28.npz")
    with pytest.raises(DatasetError, match="breastmnist"):
        plan_medmnist(str(path))
    with pytest.raises(DatasetError, match="does not exist"):
        plan_medmnist(str(tmp_path / "nope.npz"))
