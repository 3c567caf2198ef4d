"""A study on a multi-class folder store, end to end (issue 12): `cxrkd data import folder`
of three class folders of real PNG files, then ``cxrkd.run`` of ``pneumonia-kd``'s fine-tuned
ResNet-18 cell (search, then the final re-training on the demo seeds) on a private local
Ray, then its records, tables and dashboard. The films are synthetic (a bright square whose
place is the class), and so labelled."""

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
CLASSES = ("COVID", "NORMAL", "PNEUMONIA")
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


@pytest.fixture
def local_ray(monkeypatch):
    import ray

    monkeypatch.setenv("CXRKD_TRIAL_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=100 * 1024 * 1024, log_to_driver=False)  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_study_runs_on_a_multiclass_folder_store(tmp_path, local_ray):
    write_synthetic_classes(tmp_path / "xrays3")
    argv = ["data", "import", "folder", str(tmp_path / "xrays3"), "--size", "16"]
    assert main([*argv, "--workers", "1", "--no-progress"]) == 0
    run = Path(
        cxrkd.run(
            "pneumonia-kd",
            dataset="xrays3",
            name="mc",
            storage=str(tmp_path / "runs"),
            num_samples=1,
            only=["resnet18_finetuned"],
            overrides=TINY,
        )
    )
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
