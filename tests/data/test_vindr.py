"""VinDr-CXR: DICOM decoding (window, rescale, MONOCHROME1, JPEG 2000 at reduced scale), the
reader label rules, the official splits, privacy of DICOM headers, and every bad-input case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from fixtures_dicom import (
    IDENTIFYING_STRINGS,
    LEAKY_TRIPLET,
    LEARNABLE_FINDINGS,
    TRAIN_LABELS,
    chest_values,
    lung_mask,
    write_dicom,
    write_vindr_learnable_tree,
    write_vindr_tree,
)
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1

from cxrkd.trainables.data import dicom
from cxrkd.trainables.data.dicom import HEADER_FIELDS, decode_dicom, decoder_problem, read_header
from cxrkd.trainables.data.import_plan import resize_square
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.store import BASE_COLUMNS, DatasetError, DatasetStore, datasets_dir
from cxrkd.trainables.data.vindr import (
    GLOBAL_LABELS,
    IMPORTER_VERSION,
    LOCAL_LABELS,
    combine_readers,
    plan_vindr,
)
from cxrkd.trainables.data.writer import write_store

NO = []  # a reader who marked "No finding"
TRAIN = {
    "a1": [["Nodule/Mass"], NO, NO],  # 1 of 3: positive only under `any`
    "a2": [["Cardiomegaly"], ["Cardiomegaly", "ILD"], NO],  # 2 of 3: positive under both
    "a3": [NO, NO, NO],
    "a4": [["Other diseases"], ["Other diseases"], ["Other diseases"]],
    "a5": [NO, NO, NO],
    "a6": [["Pleural effusion"], NO, NO],
}
TEST = {"t1": ["Other diseases", "Lung tumor"], "t2": [], "t3": ["Aortic enlargement"]}
FORMATS = {"a3": "mono1", "t2": "png"}


@pytest.fixture
def vindr(tmp_path) -> Path:
    return write_vindr_tree(tmp_path / "vindr", train=TRAIN, test=TEST, formats=FORMATS)


def _import(src, home, **options):
    return import_dataset(
        "vindr", str(src), size=32, home=home, workers=1, progress=False, **options
    )


# --- decoding ---------------------------------------------------------------------------------


def _dicom_linear(x, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written from the standard's formula."""
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(y, 0, 255)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, ExplicitVRLittleEndian])
def test_rescale_then_window_clips_outside_values(tmp_path, syntax):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (48, 1))  # all 12-bit values
    path = write_dicom(
        tmp_path / "w.dicom",
        ramp,
        bits_stored=12,
        window=(3100.0, 2400.0),
        rescale=(2.0, -1000.0),
        syntax=syntax,
    )
    image, width, height = decode_dicom({"source_path": str(path)}, 48)
    expected = _dicom_linear(ramp * 2.0 - 1000.0, 3100.0, 2400.0)
    assert (width, height) == (64, 48) and image.dtype == np.uint8
    assert np.abs(image.astype(float) - expected).max() <= 1.0
    assert (image[:, :15] == 0).all() and (image[:, -15:] == 255).all()  # clipped both ends
    assert 0 < image[0, 32] < 255


def test_first_window_of_a_multivalued_window_is_used(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (40, 1))
    path = write_dicom(tmp_path / "m.dicom", ramp, window=([1000.0, 3000.0], [500.0, 4000.0]))
    image, _, _ = decode_dicom({"source_path": str(path)}, 40)
    assert np.abs(image.astype(float) - _dicom_linear(ramp, 1000.0, 500.0)).max() <= 1.0


def test_no_window_means_min_max(tmp_path):
    stored = chest_values(48, 40, bits=12) // 4 + 300  # uses 300..~1320 of the 12-bit range
    image, _, _ = decode_dicom({"source_path": str(write_dicom(tmp_path / "n.dcm", stored))}, 40)
    assert image.min() == 0 and image.max() == 255


def test_voi_lut_sequence_is_used_when_there_is_no_window(tmp_path):
    stored = chest_values(48, 40, bits=12)
    path = write_dicom(tmp_path / "lut.dcm", stored, syntax=ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    lut = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)  # brightens the lungs
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", lut.tolist())  # LUTData
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds.save_as(path)
    image, _, _ = decode_dicom({"source_path": str(path)}, 40)
    mapped = lut[stored].astype(float)
    expected = (mapped - mapped.min()) / (mapped.max() - mapped.min()) * 255
    assert np.abs(image - expected).max() <= 1.0


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_lungs_are_dark_whatever_the_photometric_interpretation(tmp_path, photometric):
    stored = chest_values(48, 40, bits=12, lungs_high=photometric == "MONOCHROME1")
    path = write_dicom(tmp_path / "p.dicom", stored, photometric=photometric)
    image, _, _ = decode_dicom({"source_path": str(path)}, 40)
    lungs = lung_mask(48, 40)
    assert image[lungs].mean() < 40 and image[~lungs].mean() > 100


def test_jpeg2000_decodes_at_reduced_scale_close_to_a_full_decode(tmp_path):
    stored = chest_values(320, 256, bits=12)
    path = write_dicom(tmp_path / "big.dicom", stored, window=(2048.0, 4096.0))
    reduced, width, height = decode_dicom({"source_path": str(path)}, 64)
    full, _, _ = decode_dicom({"source_path": str(path)}, 1024)  # no reduction possible
    assert (width, height) == (256, 320)
    assert reduced.shape == (80, 64)  # 2 wavelet levels: both sides still >= 64
    np.testing.assert_array_equal(full, decode_reference(path))  # shift back to 12 bits exact
    diff = resize_square(reduced, 64).astype(int) - resize_square(full, 64)
    # equal but for resampling at the sharp phantom lung edges; no brightness shift
    assert np.percentile(np.abs(diff), 90) <= 3 and abs(diff.mean()) < 0.5


def decode_reference(path) -> np.ndarray:
    """pydicom's own full decode through the same window (the reference for exactness)."""
    ds = pydicom.dcmread(path)
    return dicom.display_image(ds.pixel_array, ds)


def test_header_reads_only_display_fields(tmp_path):
    path = write_dicom(tmp_path / "h.dicom", chest_values(48, 40), window=(2048.0, 1000.0))
    header = read_header(path)
    assert tuple(header) == HEADER_FIELDS
    assert header["photometric"] == "MONOCHROME2" and header["bits_stored"] == 12
    assert (header["rows"], header["cols"]) == (48, 40) and header["window_center"] == 2048.0
    assert header["transfer_syntax"] == JPEG2000Lossless


def test_missing_decoder_names_the_package(monkeypatch):
    assert decoder_problem(JPEG2000Lossless) is None
    monkeypatch.setattr(dicom, "_can_decode", lambda syntax: False)
    assert "pylibjpeg-openjpeg" in decoder_problem(JPEG2000Lossless)
    assert "pylibjpeg-libjpeg" in decoder_problem(JPEGLosslessSV1)
    assert "convert these files" in decoder_problem("1.2.840.10008.1.2.4.100")  # MPEG-2


# --- labels and splits ------------------------------------------------------------------------


def test_import_keeps_official_test_and_splits_val_from_train(vindr, tmp_path):
    manifest = _import(vindr, tmp_path / "home", val_fraction=0.34)
    assert manifest.name == "vindr-cxr" and manifest.task == "multilabel"
    assert manifest.labels == [*LOCAL_LABELS, *GLOBAL_LABELS, "abnormal"]
    assert manifest.finding_labels == list(LOCAL_LABELS) and manifest.global_label == "abnormal"
    assert manifest.splits == {"train": 4, "val": 2, "test": 3}
    meta = DatasetStore.open("vindr-cxr", tmp_path / "home").meta.set_index("image_id")
    assert set(meta.index[meta["split"] == "test"]) == set(TEST)
    assert set(meta.index[meta["split"] != "test"]) == set(TRAIN)
    assert meta["patient_id"].isna().all()
    # test labels are the CSV's consensus, "Other disease" stored as "Other diseases"
    assert meta.loc["t1", ["Other diseases", "Lung tumor", "abnormal", "No finding"]].tolist() == [
        1,
        1,
        1,
        0,
    ]
    assert meta.loc["t2", ["No finding", "abnormal"]].tolist() == [1, 0]
    assert meta.loc["t2", "format"] == "png" and meta.loc["a3", "photometric"] == "MONOCHROME1"
    assert (meta.loc["a1", ["orig_width", "orig_height"]] == [40, 48]).all()


def test_monochrome1_fixture_is_stored_with_dark_lungs(vindr, tmp_path):
    _import(vindr, tmp_path / "home")
    store = DatasetStore.open("vindr-cxr", tmp_path / "home")
    lungs = resize_square((lung_mask(48, 40) * 255).astype(np.uint8), 32) == 255
    for image_id in ("a3", "a2", "t2"):  # MONOCHROME1, MONOCHROME2, PNG export
        image = store.images[int(np.flatnonzero(store.meta["image_id"] == image_id)[0])]
        assert image[lungs].mean() < 40 and image[~lungs].mean() > 90, image_id


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("majority", {"a1": (0, 1, 0), "a2": (1, 0, 1), "a6": (0, 1, 0)}),
        ("any", {"a1": (1, 0, 1), "a2": (1, 0, 1), "a6": (1, 0, 1)}),
    ],
)
def test_label_rule_majority_vs_any(vindr, rule, expected):
    rows = plan_vindr(str(vindr), label_rule=rule).rows.set_index("image_id")
    finding = {"a1": "Nodule/Mass", "a2": "Cardiomegaly", "a6": "Pleural effusion"}
    for image_id, values in expected.items():
        got = rows.loc[image_id, [finding[image_id], "No finding", "abnormal"]].tolist()
        assert tuple(got) == values, (rule, image_id)
    assert rows.loc["a2", "ILD"] == (1 if rule == "any" else 0)
    assert rows.loc["a4", "Other diseases"] == 1 and (rows.loc["a3", "abnormal"] == 0)
    assert (rows.loc[["t1", "t2", "t3"], "n_readers"].isna()).all()


def test_majority_with_other_reader_counts_needs_more_than_half():
    votes = {
        "two_of_four": [1, 1, 0, 0],
        "three_of_four": [1, 1, 1, 0],
        "one_of_two": [1, 0],
        "one_of_one": [1],
    }
    frame = pd.DataFrame(
        [
            {
                "image_id": i,
                "rad_id": f"R{r}",
                **dict.fromkeys([*LOCAL_LABELS, *GLOBAL_LABELS], 0),
                "Edema": v,
                "No finding": 1 - v,
            }
            for i, vs in votes.items()
            for r, v in enumerate(vs)
        ]
    )
    out = combine_readers(frame, rule="majority").set_index("image_id")
    assert out["Edema"].to_dict() == {
        "one_of_one": 1,
        "one_of_two": 0,
        "three_of_four": 1,
        "two_of_four": 0,
    }
    assert out["n_readers"].to_dict()["two_of_four"] == 4


def test_the_test_csv_may_use_either_spelling(vindr, tmp_path):
    csv = vindr / "annotations" / "image_labels_test.csv"
    csv.write_text(csv.read_text().replace("Other disease,", "Other diseases,"))
    rows = plan_vindr(str(vindr)).rows.set_index("image_id")
    assert rows.loc["t1", "Other diseases"] == 1


def test_dicom_preferred_when_an_image_also_has_a_png(vindr):
    shutil.copy(vindr / "train" / "a1.dicom", vindr / "train" / "a1.png")  # name only matters
    plan = plan_vindr(str(vindr))
    assert plan.rows.set_index("image_id").loc["a1", "format"] == "dicom"
    assert any("DICOM and PNG" in note for note in plan.notes)


# --- privacy ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:End of file reached")  # the truncated file, on purpose
def test_no_identifying_header_value_reaches_the_store_or_the_logs(vindr, tmp_path, capfd):
    capfd.readouterr()  # start the log check clean
    source_bytes = (vindr / "train" / "a1.dicom").read_bytes()
    assert all(s.encode() in source_bytes for s in IDENTIFYING_STRINGS)  # the test can fail
    broken = vindr / "train" / "a5.dicom"  # header intact, pixel data cut: a logged failure
    broken.write_bytes(broken.read_bytes()[:-200])
    write_store(
        plan_vindr(str(vindr)),
        size=32,
        home=tmp_path / "home",
        workers=1,
        max_unreadable=0.5,
        progress=True,
    )
    out, err = capfd.readouterr()
    assert "a5.dicom" in err  # the skipped file was logged, so the log check means something
    store = datasets_dir(tmp_path / "home") / "vindr-cxr"
    blobs = {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert {"images.npy", "meta.parquet", "manifest.json"} <= set(blobs)
    for needle in IDENTIFYING_STRINGS:
        for name, blob in blobs.items():
            assert needle.encode() not in blob, (needle, name)
        assert needle not in out + err, needle
    meta = DatasetStore(store).meta
    expected = {
        *BASE_COLUMNS,
        *LOCAL_LABELS,
        *GLOBAL_LABELS,
        "abnormal",
        "n_readers",
        "format",
        *HEADER_FIELDS,
    } - {"rows", "cols"}
    assert set(meta.columns) == expected


# --- bad input --------------------------------------------------------------------------------


def _break(root: Path, case: str) -> None:
    ann = root / "annotations"
    if case == "no_annotations":
        shutil.rmtree(ann)
    elif case == "no_train_csv":
        (ann / "image_labels_train.csv").unlink()
    elif case in ("no_train_dir", "no_test_dir"):
        shutil.rmtree(root / case.removeprefix("no_").removesuffix("_dir"))
    elif case == "missing_columns":
        frame = pd.read_csv(ann / "image_labels_train.csv")
        frame.drop(columns=["rad_id", "Edema"]).to_csv(ann / "image_labels_train.csv")
    elif case == "bad_values":
        frame = pd.read_csv(ann / "image_labels_test.csv")
        frame.loc[0, "ILD"] = 2
        frame.to_csv(ann / "image_labels_test.csv", index=False)
    elif case == "ids_without_file":
        (root / "train" / "a2.dicom").unlink()
        (root / "train" / "a4.dicom").unlink()
    elif case == "images_without_labels":
        shutil.copy(root / "test" / "t1.dicom", root / "test" / "t9.dicom")
    elif case == "no_decoder":
        for path in (root / "train").glob("*.dicom"):
            write_dicom(path, chest_values(48, 40), syntax=JPEGLosslessSV1)


@pytest.mark.parametrize(
    ("case", "options", "words"),
    [
        ("no_annotations", {}, ["missing ['annotations', 'annotations/image_labels_train.csv"]),
        ("no_train_csv", {}, ["missing ['annotations/image_labels_train.csv']"]),
        ("no_train_dir", {}, ["missing ['train']", "train/<image_id>.dicom"]),
        ("no_test_dir", {}, ["missing ['test']"]),
        ("missing_columns", {}, ["['rad_id', 'Edema']"]),
        ("bad_values", {}, ["['ILD']", "other than 0 and 1"]),
        ("ids_without_file", {}, ["2 image id(s)", "['a2', 'a4']", "no file"]),
        ("images_without_labels", {}, ["1 image(s) in test/", "['t9']", "no row"]),
        (None, {"label_rule": "unanimous"}, ["'unanimous'", "('majority', 'any')"]),
        (None, {"val_fraction": 1.5}, ["1.5"]),
    ],
)
def test_bad_input_is_refused_before_writing(vindr, tmp_path, case, options, words):
    if case:
        _break(vindr, case)
    with pytest.raises(DatasetError) as err:
        _import(vindr, tmp_path / "home", **options)
    for word in words:
        assert word in str(err.value)
    assert not datasets_dir(tmp_path / "home").exists()


def test_missing_codec_fails_up_front_naming_the_package(vindr, tmp_path, monkeypatch):
    if decoder_problem(JPEGLosslessSV1) is None:  # a real, uninstalled codec where possible
        monkeypatch.setattr(dicom, "_can_decode", lambda syntax: syntax != JPEGLosslessSV1)
    _break(vindr, "no_decoder")
    with pytest.raises(DatasetError) as err:
        _import(vindr, tmp_path / "home")
    assert "6 DICOM file(s) cannot be decoded" in str(err.value)
    assert "pylibjpeg-libjpeg" in str(err.value)
    assert not datasets_dir(tmp_path / "home").exists()


def test_jpeg2000_without_any_decoder_names_openjpeg(vindr, tmp_path, monkeypatch):
    monkeypatch.setattr(dicom, "_can_decode", lambda syntax: False)
    with pytest.raises(DatasetError, match="pylibjpeg-openjpeg"):
        _import(vindr, tmp_path / "home")


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_undecodable_first_files_fail_up_front(vindr, tmp_path):
    for path in sorted((vindr / "train").glob("*.dicom")):
        path.write_bytes(path.read_bytes()[:-300])  # truncated pixel data everywhere
    with pytest.raises(DatasetError, match="could not be decoded"):
        _import(vindr, tmp_path / "home")


# --- the learnable fixture tree (for end-to-end runs) -----------------------------------------


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg) + 0.5 * (pos[:, None] == neg)).mean())


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    return write_vindr_learnable_tree(tmp_path_factory.mktemp("vindr") / "src")  # 160 + 48


def test_learnable_tree_has_the_published_csvs(learnable):
    train = pd.read_csv(learnable / "annotations" / "image_labels_train.csv")
    test = pd.read_csv(learnable / "annotations" / "image_labels_test.csv")
    assert list(train.columns) == ["image_id", "rad_id", *TRAIN_LABELS]
    assert "Other disease" in test.columns and "rad_id" not in test.columns
    assert len(train) == 3 * 160 and train.groupby("image_id").size().eq(3).all()
    assert len(test) == 48 and train["image_id"].str.fullmatch("[0-9a-f]{32}").all()
    assert set(train["rad_id"]) <= {f"R{k}" for k in range(1, 18)}
    assert len(list((learnable / "train").glob("*.dicom"))) == 160
    # Reader identity leaks the label, as in the real set: a trap for stratification.
    leaky = train.groupby("image_id")["rad_id"].agg(set) == set(LEAKY_TRIPLET)
    abnormal = train.groupby("image_id")["No finding"].sum() < 2  # by majority
    assert leaky[abnormal].mean() > 0.5 > leaky[~abnormal].mean()


def test_learnable_tree_imports_with_a_signal_and_both_classes_in_val(learnable, tmp_path):
    for seed in range(5):  # a per-image validation split holds both classes, whatever seed
        rows = plan_vindr(str(learnable), seed=seed).rows
        val = rows[rows["split"] == "val"]
        assert set(val["abnormal"]) == {0, 1}, seed
        # several findings have both classes in val, so a macro AUROC over findings is defined
        assert sum(0 < val[f].sum() < len(val) for f in LEARNABLE_FINDINGS) >= 4, seed
    manifest = _import(learnable, tmp_path / "home")
    assert manifest.splits == {"train": 144, "val": 16, "test": 48}
    store = DatasetStore.open("vindr-cxr", tmp_path / "home")
    assert manifest.label_counts["test"]["abnormal"] == int(store.label_matrix("test")[:, -1].sum())
    for finding in LEARNABLE_FINDINGS:
        assert store.meta[finding].sum() >= 5, finding
    # Brightness alone separates abnormal from normal films: a small CNN learns it fast.
    for split in ("train", "test"):
        images, labels = store.split_arrays(split)
        scores = images.reshape(len(images), -1).astype(float).mean(1)
        assert _auc(scores, labels[:, manifest.labels.index("abnormal")]) > 0.9, split
    assert (store.meta["n_readers"].dropna() == 3).all()
    # 'any' turns the single readers' "Other lesion" calls into abnormal films.
    any_rule = plan_vindr(str(learnable), label_rule="any").rows
    assert any_rule["Other lesion"].sum() > 0 == store.meta["Other lesion"].sum()


def _val_and_train(rows: pd.DataFrame, triplets: pd.Series) -> dict[str, tuple[float, float]]:
    """Per split: (share of films read by R8/R9/R10, abnormal rate)."""
    pool = rows[rows["split"] != "test"].set_index("image_id")
    leaky = triplets.reindex(pool.index).eq(set(LEAKY_TRIPLET))
    return {
        split: (float(leaky[pool["split"] == split].mean()), float(part["abnormal"].mean()))
        for split, part in pool.groupby("split")
    }


def test_validation_is_stratified_by_reader_triplet_and_label(learnable):
    """Reader identity leaks the label (REAL_DATA.md): validation must hold the same share of
    R8/R9/R10 films and of abnormal films as train, whatever the seed, within one image."""
    csv = pd.read_csv(learnable / "annotations" / "image_labels_train.csv")
    triplets = csv.groupby("image_id")["rad_id"].agg(set)
    one_image = 1 / 16  # validation holds 16 films
    for seed in range(5):
        plan = plan_vindr(str(learnable), seed=seed)
        shares = _val_and_train(plan.rows, triplets)
        (leaky_val, abnormal_val), (leaky_train, abnormal_train) = shares["val"], shares["train"]
        assert leaky_train > 0.2  # the fixture's leak is there to be matched
        assert abs(leaky_val - leaky_train) <= one_image, (seed, shares)
        assert abs(abnormal_val - abnormal_train) <= one_image, (seed, shares)
        # the readers choose the split only: no reader id is a column or a value of the rows
        assert not {"rad_id", "readers", "triplet"} & set(plan.rows.columns)
        text = plan.rows.astype(str).to_numpy()
        assert not np.isin(text, [*csv["rad_id"].unique(), "R10+R8+R9"]).any()
        assert any("stratified by (reader triplet, abnormal)" in note for note in plan.notes)


def test_stratified_validation_is_deterministic_and_follows_the_seed(learnable):
    def val_ids(seed):
        rows = plan_vindr(str(learnable), seed=seed).rows
        return set(rows.loc[rows["split"] == "val", "image_id"])

    assert val_ids(3) == val_ids(3)
    assert val_ids(3) != val_ids(4)
    assert plan_vindr(str(learnable)).options["importer_version"] == IMPORTER_VERSION == 2


def test_store_of_the_unstratified_importer_is_not_reused(vindr, tmp_path):
    """Version 1 drew validation at random: --exist-ok must not hand back its split."""
    home = tmp_path / "home"
    _import(vindr, home)
    path = datasets_dir(home) / "vindr-cxr" / "manifest.json"
    old = json.loads(path.read_text())
    old["options"].pop("importer_version")  # version 1 wrote none
    path.write_text(json.dumps(old))
    with pytest.raises(DatasetError, match="version 1 of the vindr importer; this is version 2"):
        _import(vindr, home, exist_ok=True)
