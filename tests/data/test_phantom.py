"""The built-in synthetic phantom: determinism, labels, splits, images, resolution sensitivity."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.phantom import FINDINGS, plan_phantom, render_phantom
from cxrkd.trainables.data.phantom_film import render_params
from cxrkd.trainables.data.splits import assert_patient_disjoint
from cxrkd.trainables.data.store import SYNTHETIC_BANNER, DatasetError, DatasetStore


def _import(home, *, seed=0, name=None, workers=1, preset="findings", n=120, size=64):
    return import_dataset(
        "phantom", preset, name=name, n=n, seed=seed, size=size, home=home,
        workers=workers, progress=False,
    )  # fmt: skip


def test_same_seed_same_fingerprint_other_seed_differs(tmp_path):
    a = _import(tmp_path, name="a")
    b = _import(tmp_path, name="b", workers=2)  # rendered in worker processes: same bytes
    c = _import(tmp_path, name="c", seed=1)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    meta_a = DatasetStore.open("a", tmp_path).meta
    meta_b = DatasetStore.open("b", tmp_path).meta
    assert meta_a.equals(meta_b)
    assert not meta_a["params"].equals(DatasetStore.open("c", tmp_path).meta["params"])
    pickle.loads(pickle.dumps(render_phantom))  # the writer ships the decoder to workers


def test_manifest_is_labelled_synthetic_and_complete(tmp_path):
    m = _import(tmp_path)
    assert m.synthetic and m.kind == "phantom" and SYNTHETIC_BANNER in m.title
    assert m.source == "synthetic phantom (cxrkd built-in), preset findings, seed 0"
    assert m.name == "phantom-findings" and m.task == "multilabel"
    assert m.labels == [*FINDINGS, "abnormal"] and m.finding_labels == FINDINGS
    assert m.global_label == "abnormal"
    assert m.options == dict(
        preset="findings", n=120, seed=0, val_fraction=0.1, test_fraction=0.15, size=64
    )
    assert set(m.splits) == {"train", "val", "test"} and m.n_images == 120
    meta = DatasetStore.open(m.name, tmp_path).meta
    assert meta["source_path"].iloc[7] == "phantom://findings/0/7"
    assert (meta["orig_width"] == 64).all() and (meta["orig_height"] == 64).all()
    # --exist-ok compares plan.options: the same request reuses the store, another seed fails
    again = import_dataset("phantom", "findings", n=120, size=64, home=tmp_path, exist_ok=True)
    assert again.fingerprint == m.fingerprint
    with pytest.raises(DatasetError, match="exists but"):
        import_dataset("phantom", "findings", n=120, seed=3, size=64, home=tmp_path,
                       exist_ok=True)  # fmt: skip


def test_pneumonia_preset_matches_kaggle_balance():
    plan = plan_phantom("pneumonia", n=1000)
    rows = plan.rows
    assert plan.task == "binary" and plan.labels == ["pneumonia"] and plan.finding_labels == []
    assert plan.name == "phantom-pneumonia" and plan.synthetic
    assert 0.70 <= rows["pneumonia"].mean() <= 0.78
    # the pattern (like Kaggle's bacteria/virus) is what was drawn; labels differ only by noise
    drawn = rows["pattern"] != "none"
    assert set(rows["pattern"]) == {"none", "lobar", "patchy"}
    assert ((rows["pneumonia"] == drawn) | rows["label_noise"]).all()
    assert 0.02 <= rows["label_noise"].mean() <= 0.07
    assert (rows.loc[rows["label_noise"], "flipped"] == "pneumonia").all()
    for params, pattern in zip(rows["params"], rows["pattern"], strict=True):
        find = json.loads(params)["find"]
        assert ("lobar" in find) == (pattern == "lobar")
        assert ("patchy" in find) == (pattern == "patchy")


def test_findings_prevalences_and_label_noise():
    rows = plan_phantom("findings", n=2000, seed=2).rows
    for name in FINDINGS:
        assert 0.04 <= rows[name].mean() <= 0.25, name
    assert 0.38 <= rows["abnormal"].mean() <= 0.55
    clean = rows[~rows["label_noise"]]
    assert (clean["abnormal"] == clean[FINDINGS].max(axis=1)).all()
    noisy = rows[rows["label_noise"]]
    assert 0.03 <= len(noisy) / len(rows) <= 0.07
    assert set(noisy["flipped"]) <= {*FINDINGS, "abnormal"} and len(set(noisy["flipped"])) > 3
    # no label is noise-free and separable from the parameters alone
    ctr = rows["ctr"]
    cardio = rows["cardiomegaly"] == 1
    assert ctr[cardio].min() < 0.5 or ctr[~cardio].max() > 0.5


def test_splits_are_patient_grouped_with_shared_anatomy():
    rows = plan_phantom("findings", n=1000, seed=4).rows
    assert_patient_disjoint(rows)
    per_patient = rows.groupby("patient_id").size()
    assert per_patient.max() > 1 and per_patient.min() >= 1
    shares = rows.groupby("split")["patient_id"].nunique() / rows["patient_id"].nunique()
    assert shares["test"] == pytest.approx(0.15, abs=0.02)
    assert shares["val"] == pytest.approx(0.10, abs=0.02)
    for _, group in rows.groupby("patient_id"):
        anats = [json.loads(p)["anat"] for p in group["params"]]
        for key in ("lat", "apex", "ctr", "med", "rib_period"):  # patient anatomy is shared
            assert len({a[key] for a in anats}) == 1
    assert rows["params"].nunique() == len(rows)  # but every view differs


def test_bad_arguments_name_the_value_and_the_fix():
    with pytest.raises(DatasetError, match=r"'lungs'.*findings.*pneumonia"):
        plan_phantom("lungs")
    with pytest.raises(DatasetError, match="n=3"):
        plan_phantom("findings", n=3)
    with pytest.raises(DatasetError, match="val_fraction=0.5 and test_fraction=0.6"):
        plan_phantom("findings", n=50, val_fraction=0.5, test_fraction=0.6)


def test_images_look_like_radiographs(tmp_path):
    m = _import(tmp_path, preset="pneumonia", n=60)
    images = DatasetStore.open(m.name, tmp_path).images.astype(np.float32)
    assert images.std(axis=(1, 2)).min() > 20  # no blank or flat films
    assert np.abs(images[1:] - images[:-1]).mean() > 5  # films differ from one another
    rows, cols = slice(22, 30), (slice(14, 20), slice(44, 50))  # mid-lung patches, 64 px
    lungs = np.mean([images[:, rows, c].mean() for c in cols])
    mediastinum = images[:, rows, 30:34].mean()
    assert mediastinum - lungs > 40  # lungs dark, mediastinum bright (radiograph convention)
    assert images[:, 60:, 28:36].mean() - lungs > 40  # the abdomen is dense as well


@pytest.mark.parametrize("size", [28, 100, 333])
def test_any_size_renders(size):
    row = plan_phantom("findings", n=20).rows.iloc[0].to_dict()
    image, width, height = render_phantom(row, size)
    assert image.shape == (size, size) and image.dtype == np.uint8
    assert (width, height) == (size, size) and image.std() > 15


def _peak_change(params: dict, edit, *, low: int = 28, size: int = 224) -> tuple[float, float]:
    """Peak |difference| a finding makes to the film at ``size`` and after area-averaging to
    ``low`` px (what an MLCAK low-resolution student sees): ``(peak_hi, peak_lo)``."""
    without = copy.deepcopy(params)
    edit(without)
    diff = render_params(params, size).astype(np.float32) - render_params(without, size)
    k = size // low
    pooled = diff.reshape(low, k, low, k).mean(axis=(1, 3))
    return float(np.abs(diff).max()), float(np.abs(pooled).max())


EDITS = {  # how to remove each finding from a film's parameters
    "nodule": lambda p: p["find"].update(nodules=[]),
    "pneumothorax": lambda p: p["find"].pop("ptx"),
    "cardiomegaly": lambda p: p["anat"].update(ctr=0.44),
    "mass": lambda p: p["find"].update(masses=[]),
}


def test_small_findings_fade_at_28px_large_ones_do_not():
    rows = plan_phantom("findings", n=600, seed=5).rows
    rows = rows[~rows["label_noise"]]
    kept = {}
    for name, edit in EDITS.items():
        params = rows.loc[rows[name] == 1, "params"].iloc[:4]
        changes = np.array([_peak_change(json.loads(p), edit) for p in params])
        assert changes[:, 0].min() > 10  # every finding is visible at 224 px (noise ~2-7)
        kept[name] = float(np.mean(changes[:, 1] / changes[:, 0]))
    # A nodule (a few px) or the pleural line (~1 px) averages away into an 8x8 block; a large
    # nodule (radius ~ one block) or a thick line would keep over half of its contrast.
    assert kept["nodule"] < 0.3 and kept["pneumothorax"] < 0.3, kept
    assert kept["cardiomegaly"] > 0.7 and kept["mass"] > 0.7, kept
