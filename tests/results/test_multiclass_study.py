"""A study on a multi-class folder store, end to end (issue 12): `cxrkd data import folder`
of three class folders of real PNG files, then ``cxrkd.run`` of ``pneumonia-kd``'s fine-tuned
ResNet-18 cell (search, then the final re-training on the demo seeds) on a private local
Ray, then its records, tables and dashboard, and its final model exported in every format and
applied to the test images by ``cxrkd predict``. The films are synthetic (a bright square whose
place is the class), and so labelled. One run (a module fixture) serves both tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cxrkd
from cxrkd.results.held_out_scores import load_test_scores
from cxrkd.search.cli import main

skm = pytest.importorskip("sklearn.metrics")
# One test process for both tests: their run (the module fixture) is made once.
pytestmark = pytest.mark.xdist_group("multiclass-study")
CLASSES = ("COVID", "NORMAL", "PNEUMONIA")
try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    FORMATS = ["safetensors", "torchscript", "onnx"]
except ImportError:  # optional: pip install 'cxrkd[onnx]'
    FORMATS = ["safetensors", "torchscript"]
TOL = 1e-5  # float32 logits, scored in other batches (and by ONNX Runtime): equal but rounding
# Every trial: 16 px, 2 epochs of 2 steps of 8 images, no pretrained weights.
TINY = {"img_size": "16", "epochs": "2", "steps_per_epoch": "2", "batch_size": "8",
        "pretrained": "false"}  # fmt: skip


def write_synthetic_classes(root: Path, per_class: int = 14) -> None:
    rng = np.random.default_rng(0)
    for j, cls in enumerate(CLASSES):
        for k in range(per_class):
            image = rng.integers(0, 80, (24, 24)).astype(np.uint8)
            image[4 + 6 * j : 10 + 6 * j, 4:10] = 220
            path = root / cls / f"synthetic_{k:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory):
    """``(run folder, CXRKD_HOME)`` of the one tiny study this module checks: its store and
    teacher cache in a home of its own (each test's private home would lose them)."""
    import ray

    base = tmp_path_factory.mktemp("multiclass")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRKD_HOME", str(base / "home"))
        mp.setenv("CXRKD_TRIAL_THREADS", "1")
        mp.setenv("OMP_NUM_THREADS", "1")
        write_synthetic_classes(base / "xrays3")
        argv = ["data", "import", "folder", str(base / "xrays3"), "--size", "16"]
        assert main([*argv, "--workers", "1", "--no-progress"]) == 0
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=100 * 1024 * 1024, log_to_driver=False)  # fmt: skip
        try:
            run = cxrkd.run(
                "pneumonia-kd",
                dataset="xrays3",
                name="mc",
                storage=str(base / "runs"),
                num_samples=1,
                only=["resnet18_finetuned"],
                overrides=TINY,
            )
        finally:
            ray.shutdown()
    return Path(run), base / "home"


@pytest.mark.slow
def test_a_study_runs_on_a_multiclass_folder_store(mc_run):
    run, _ = mc_run
    trials = pd.read_parquet(run / "trials.parquet")
    final = trials[(trials["stage"] == "final") & (trials["status"] == "completed")]
    assert len(final) == 2  # the demo profile's two seeds
    scores = load_test_scores(str(run), trials)
    assert len(scores) == 2
    for (_, trial_id), saved in scores.items():
        y = saved["global_label"]
        p = 1 / (1 + np.exp(-saved["finding_logits"]))  # the softmax probabilities, as saved
        macro = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
        assert final.set_index("trial_id").loc[trial_id, "test_auc"] == pytest.approx(macro)
        n_test = len(y)
    counts = pd.read_csv(run / "tables" / "confusion_resnet18_finetuned.csv")
    assert counts[[c.lower() for c in CLASSES]].to_numpy().sum() == 2 * n_test
    table = (run / "tables" / "pneumonia_kd.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "accuracy" in header and "F1" in header and "AUPRC" not in header
    assert "one-vs-rest macro AUROC" in table
    assert "argmax" in (run / "dashboard.html").read_text()


@pytest.mark.slow
def test_a_multiclass_model_exports_and_predicts_its_test_scores(mc_run, tmp_path, monkeypatch,
                                                                 capsys):  # fmt: skip
    """Each format, applied to the store's test images written to PNG (lossless), gives the
    softmax probabilities the final trial saved for them, and their argmax as the class."""
    import json

    from cxrkd.trainables.data.store import DatasetStore

    run, home = mc_run
    monkeypatch.setenv("CXRKD_HOME", str(home))  # where the run's store is
    labels = [c.lower() for c in CLASSES]
    trials = pd.read_parquet(run / "trials.parquet")
    final = trials[(trials["stage"] == "final") & (trials["status"] == "completed")]
    row = final[final["config/seed"] == final["config/seed"].max()].iloc[0]
    seed = int(row["config/seed"])
    saved = load_test_scores(str(run), trials)[("resnet18_finetuned", row["trial_id"])]
    want = 1 / (1 + np.exp(-saved["finding_logits"]))  # the saved softmax probabilities
    images, onehot = DatasetStore.open("xrays3").split_arrays("test")
    np.testing.assert_array_equal(onehot.argmax(axis=1), saved["global_label"])  # same order
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"test-{i}.png"))
        Image.fromarray(image).save(paths[-1])
    capsys.readouterr()
    for fmt in FORMATS:
        out = tmp_path / f"model-{fmt}"
        argv = ["export", str(run), "--cell", "resnet18_finetuned", "--seed", str(seed)]
        assert main([*argv, "--format", fmt, "--out", str(out)]) == 0, capsys.readouterr().err
        assert "the class of highest probability (argmax)" in capsys.readouterr().out
        sidecar = json.loads((out / "cxrkd-model.json").read_text())
        assert (sidecar["task"], sidecar["dataset"]["task"]) == ("multiclass", "multiclass")
        assert sidecar["classes"] == sidecar["outputs"] == labels
        assert sidecar["trial_id"] == row["trial_id"] and "softmax" in sidecar["probabilities"]
        assert "threshold" not in sidecar["decision"] and "argmax" in sidecar["decision"]["rule"]
        assert main(["predict", str(out), *paths, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert (got["task"], got["classes"], got["decision"]) == ("multiclass", labels, "argmax")
        assert "threshold" not in got
        probs = np.array([[r["probabilities"][c] for c in labels] for r in got["images"]])
        np.testing.assert_allclose(probs, want, rtol=0, atol=TOL, err_msg=fmt)
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=TOL)
        predicted = [r["predicted"] for r in got["images"]]
        assert predicted == [labels[k] for k in want.argmax(axis=1)], fmt
        assert [r["path"] for r in got["images"]] == paths and "positive" not in got["images"][0]
    # The table form: a probability per class, then the predicted class.
    assert main(["predict", str(tmp_path / f"model-{FORMATS[-1]}"), *paths[:2]]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.split("\t") == ["path", *(f"p({c})" for c in labels), "predicted"]
    assert [line.split("\t")[-1] for line in lines] == predicted[:2]
